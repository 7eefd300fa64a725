"""Mask training under DistributedDataParallel: 2 CPU processes, gloo backend.

Ranks must hold identical mask parameters after every step, and the result must equal
single-process training on the same global batch.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import neurosurgeon as ns
from _distributed import run_ranks

WORLD, STEPS, LAMBDA, LR = 2, 3, 1e-3, 0.5
STRATEGIES = ("continuous_sparsification", "hard_concrete")


def _model(strategy):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    ns.inject_masks(model, nn.Linear, key=0, strategy=strategy)
    return model.train()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _mask_params(model):
    return [p for n, p in model.named_parameters() if n.endswith("mask_params")]


def _train(model, forward, x, y):
    """STEPS SGD steps on (x, y); returns the flattened mask parameters after each step."""
    opt = torch.optim.SGD(_mask_params(model), lr=LR)
    history = []
    for _ in range(STEPS):
        loss = nn.functional.cross_entropy(forward(x), y) + LAMBDA * ns.l0_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(torch.cat([p.detach().flatten() for p in _mask_params(model)]).clone())
    return history


def _worker(rank, out_dir):
    x, y = _batch()
    shard = slice(rank * len(x) // WORLD, (rank + 1) * len(x) // WORLD)
    results = {}
    for strategy in STRATEGIES:
        model = _model(strategy)
        ddp = nn.parallel.DistributedDataParallel(model)
        history = _train(model, ddp, x[shard], y[shard])
        same = []
        for h in history:
            gathered = [torch.empty_like(h) for _ in range(WORLD)]
            dist.all_gather(gathered, h)
            same.append(all(torch.equal(gathered[0], g) for g in gathered))
        results[strategy] = {"history": history, "same": same}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.distributed
def test_ddp_ranks_agree_and_match_single_process_training():
    with tempfile.TemporaryDirectory() as out:
        run_ranks(_worker, out, WORLD)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
    x, y = _batch()
    for strategy in STRATEGIES:
        model = _model(strategy)
        single = _train(model, model, x, y)
        for r in ranks:
            assert all(r[strategy]["same"]), f"{strategy}: ranks diverged"
            for got, want in zip(r[strategy]["history"], single):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert not torch.equal(single[-1], single[0])  # the masks did move
