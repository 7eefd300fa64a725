"""Circuit mask training under DistributedDataParallel: 2 CPU processes, gloo backend.

Each rank trains on its half of the global batch; the ranks must hold identical mask
parameters after every step, and the result must equal ``train_circuit`` run by one process
on the whole batch (float64, so the comparison can be tight).

``train_circuit`` builds its own optimizer, so the ranks run its step from the pieces
(``CircuitMask.soft`` with ``fold_in(key, step)``, ``circuit_forward``, ``task_loss``,
``CircuitMask.l0``). ``CircuitMask`` has no ``forward`` (it holds parameters; its masks come
from ``soft`` / ``hard`` / ``top_k``), so DDP cannot call it: :class:`_Step` is a small module
whose forward is one step's loss terms, and DDP wraps that. The frozen model stays outside it,
so DDP neither broadcasts nor reduces its weights.

Why the two agree: DDP averages the ranks' gradients. The task loss is a mean over examples, so
with equal halves the average of the two halves' means is the whole batch's mean; the L0 and
Lagrangian terms depend on theta alone and are the same on every rank, so averaging leaves them
as they are. The Lagrange multipliers' gradients depend on theta alone too, so each rank's
ascent step is the same without any communication.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from _distributed import run_ranks
from neurosurgeon.circuits import (CircuitMask, ablation_values, circuit_forward, circuit_graph, learned_ablation,
                                   task_loss, train_circuit)
from neurosurgeon.functional import random as nr

WORLD, STEPS, BATCH, SEED = 2, 4, 8, 3

#: One row per loss variant: metric x ablation x penalty x strategy x level.
CASES = {
    "kl-resample-l0": dict(metric="kl", ablation="resample", l0_lambda=1e-2, lr=0.1),
    "logit_diff-mean-target": dict(metric="logit_diff", ablation="mean", target_sparsity=0.5, lr=0.1,
                                   lambda_lr=0.05),
    "cross_entropy-learned-node": dict(metric="cross_entropy", ablation="learned", l0_lambda=1e-3, lr=0.1,
                                       strategy="continuous_sparsification", level="node"),
}


def _model():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval().double()
    return model.requires_grad_(False)


def _data():
    """The global batch and the mean ablation's reference set."""
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(50, (BATCH, 6), generator=g),
             "corrupted": torch.randint(50, (BATCH, 6), generator=g),
             "answers": torch.randint(50, (BATCH,), generator=g),
             "wrong": torch.randint(50, (BATCH,), generator=g)}
    return batch, torch.randint(50, (12, 6), generator=g)


class _Step(nn.Module):
    """One step of ``train_circuit`` as a forward: ``(task loss on this batch, expected L0)``.

    Holds the trainable parts (the mask and, for a learned ablation, its values) as submodules
    and parameters, so DDP reduces exactly their gradients.
    """

    def __init__(self, model, graph, mask, learned, *, metric, ablation, reference, key):
        super().__init__()
        self.mask, self.learned = mask, learned
        # A tuple is a plain attribute: the frozen model is no submodule of what DDP wraps.
        self._frozen = (model, graph)
        self.metric, self.ablation, self.reference, self.key = metric, ablation, reference, key

    def forward(self, batch, step):
        model, graph = self._frozen
        ids = batch["input_ids"]
        with torch.no_grad():
            full = circuit_forward(model, graph, ids).output
        a = self.learned if self.learned is not None else ablation_values(
            model, graph, self.ablation, ids, reference=self.reference, corrupted=batch.get("corrupted"))
        soft = self.mask.soft(nr.fold_in(self.key, step))
        logits = circuit_forward(model, graph, ids, mask=soft, ablated=a).output
        return task_loss(self.metric, logits, batch, full), self.mask.l0()


def _train_ddp(case, rank):
    """``train_circuit``'s loop with the mask in DDP, on this rank's half of the batch.

    Returns the final theta (and learned ablation values), per-step global task losses and
    whether the ranks' theta agreed bit for bit after every step."""
    cfg = dict(CASES[case])
    model, (batch, reference) = _model(), _data()
    graph = circuit_graph(model)
    shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    batch = {k: v[shard] for k, v in batch.items()}
    mask = CircuitMask(graph, strategy=cfg.get("strategy", "hard_concrete"), level=cfg.get("level", "edge")).double()
    learned = None
    if cfg["ablation"] == "learned":  # as train_circuit: initialised at the reference mean
        learned = learned_ablation(model, graph, init=ablation_values(model, graph, "mean", reference=reference))
    step_module = _Step(model, graph, mask, learned, metric=cfg["metric"], ablation=cfg["ablation"],
                        reference=reference, key=nr.key(SEED))
    ddp = nn.parallel.DistributedDataParallel(step_module)
    optimizer = torch.optim.Adam(list(step_module.parameters()), lr=cfg["lr"])
    lambdas = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ascent = torch.optim.Adam([lambdas], lr=cfg.get("lambda_lr", 0.01), maximize=True)
    target, warmup = cfg.get("target_sparsity"), max(1, STEPS // 2)
    tasks, same = [], []
    for step in range(STEPS):
        task, kept = ddp(batch, step)
        loss = task
        if target is not None:
            gap = (1 - kept / graph.num_edges) - target * min(1.0, (step + 1) / warmup)
            loss = loss + lambdas[0] * gap + lambdas[1] * gap ** 2
        else:
            loss = loss + cfg["l0_lambda"] * kept
        optimizer.zero_grad()
        ascent.zero_grad()
        loss.backward()
        optimizer.step()
        ascent.step()
        total = task.detach().clone()
        dist.all_reduce(total)
        tasks.append(float(total) / WORLD)  # equal halves: the mean of the halves' means
        theta = mask.theta.detach().clone()
        gathered = [torch.empty_like(theta) for _ in range(WORLD)]
        dist.all_gather(gathered, theta)
        same.append(all(torch.equal(gathered[0], t) for t in gathered))
    return {"theta": mask.theta.detach().clone(), "learned": None if learned is None else learned.detach().clone(),
            "tasks": tasks, "same": same}


def _worker(rank, out_dir):
    torch.save({case: _train_ddp(case, rank) for case in CASES}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.distributed
def test_ddp_circuit_training_matches_one_process_on_the_global_batch():
    with tempfile.TemporaryDirectory() as out:
        run_ranks(_worker, out, WORLD)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
    model, (batch, reference) = _model(), _data()
    graph = circuit_graph(model)
    for case, cfg in CASES.items():
        # The worker's own loop uses this warm-up and ascent step; pass them rather than rely on defaults.
        options = {"lambda_lr": 0.01, **cfg, "warmup": max(1, STEPS // 2)}
        single = train_circuit(model, graph, [batch], key=nr.key(SEED), steps=STEPS, reference=reference, **options)
        theta = single.mask.theta.detach()
        init = CircuitMask(graph, strategy=cfg.get("strategy", "hard_concrete"), level=cfg.get("level", "edge")).theta
        assert theta.dtype == torch.float64
        assert not torch.allclose(theta, init.double()) and theta.std() > 0, f"{case}: the masks did not move apart"
        for r, result in enumerate(ranks):
            got = result[case]
            assert all(got["same"]), f"{case}: ranks diverged"
            torch.testing.assert_close(got["theta"], theta, rtol=1e-10, atol=1e-12, msg=f"{case}, rank {r}: theta")
            torch.testing.assert_close(got["tasks"], [h["task"] for h in single.history], rtol=1e-10, atol=1e-12)
            if single.ablation is not None:
                start = ablation_values(model, graph, "mean", reference=reference)
                assert not torch.allclose(single.ablation.detach(), start), f"{case}: the ablation values did not train"
                torch.testing.assert_close(got["learned"], single.ablation.detach(), rtol=1e-10, atol=1e-12)
