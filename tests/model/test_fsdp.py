"""Mask training on a model sharded with FSDP2 (``fully_shard`` per block and on the root):
2 CPU processes, gloo backend.

After every step the gathered parameters must equal single-process training on the same global
batch; masks saved from the sharded model must be the file the unsharded model writes, and
load back into either; analysis reads the gathered masks or names the step to take.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import transformers
from torch.distributed.fsdp import fully_shard
from transformers.pytorch_utils import Conv1D

import neurosurgeon as ns
from _distributed import run_ranks
from neurosurgeon.functional import random as nr
from neurosurgeon.functional.hard_concrete import _gate_noise
from neurosurgeon.functional.sampling import complement_sampled_mask, randomly_sampled_mask
from neurosurgeon.model.distributed import evaluate_baselines_split, is_sharded, shard_largest_dim

transformers.logging.set_verbosity_error()

WORLD, STEPS, LAMBDA, LR, K = 2, 3, 1e-3, 0.05, 5
#: (strategy, attention unit, MLP unit, frozen base): every strategy, unit and base mode appears.
CASES = (
    ("continuous_sparsification", "heads", "weight", True),
    ("hard_concrete", "weight", "neuron", False),
    ("hard_concrete", "heads", "weight", True),
    ("magnitude_pruning", "weight", "weight", False),
)
HEADS_HC = CASES[2]


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg)


def _model(strategy, attention, mlp, frozen):
    model = _gpt2()
    targets = ns.attention_heads(model) if attention == "heads" else {"transformer.h.*.attn.*": (attention, None)}
    targets["transformer.h.*.mlp.*"] = (mlp, None)
    ns.inject_masks(model, targets, strategy=strategy, key=0, freeze_base=frozen)
    return model.train()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (4, 8), generator=g)
    return ids


def _shard(model):
    for block in model.transformer.h:
        fully_shard(block, shard_placement_fn=shard_largest_dim)
    fully_shard(model, shard_placement_fn=shard_largest_dim)
    return model


def _full(model):
    return {n: (p.full_tensor() if is_sharded(p) else p).detach().clone() for n, p in model.named_parameters()}


def _train(model, ids):
    """STEPS steps, Adam on the masks and SGD on an unfrozen base; the full parameters after each step."""
    masks = [p for n, p in model.named_parameters() if n.endswith("mask_params")]
    base = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("mask_params")]
    # SGD for the base: some of its gradients are zero in exact arithmetic (a key bias under
    # softmax), and Adam would blow their rounding noise up to full-size steps.
    opts = [torch.optim.Adam(masks, lr=LR)] if masks else []
    opts += [torch.optim.SGD(base, lr=LR)] if base else []
    history = []
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids).loss + LAMBDA * ns.l0_penalty(model)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
        history.append(_full(model))
    local = sum(t.to_local().numel() if is_sharded(t) else t.numel()
                for p in masks for t in (p, *opts[0].state[p].values()) if t.dim() > 0)
    return history, local


def _analysis(model):
    model.eval()
    out = {"l0": ns.l0_statistics(model), "subnetwork": ns.subnetwork(model)}
    model.train()
    return out


def _subnetwork_h():
    return (torch.arange(35).reshape(5, 7) % 3 == 0).float()


def _sharded_draws():
    """Hard-concrete noise and sampled ablations of a theta / h split unevenly over the ranks,
    gathered: each rank draws its own gates; the samplers gather h (they draw k units overall)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh, h = init_device_mesh("cpu", (WORLD,)), _subnetwork_h()
    out = {}
    for dim in (0, 1):
        sharded = distribute_tensor(h, mesh, [Shard(dim)], src_data_rank=None)
        out[dim, "noise"] = _gate_noise(nr.key(4), sharded).full_tensor()
        for sampler in (randomly_sampled_mask, complement_sampled_mask):
            out[dim, sampler.__name__] = sampler(nr.key(4), sharded).full_tensor()
    return out


def _worker(rank, out_dir):
    ids = _batch()
    ids = ids[rank * len(ids) // WORLD: (rank + 1) * len(ids) // WORLD]
    results = {}
    ns.save_masks(_shard(_model(*HEADS_HC)), os.path.join(out_dir, "sharded-untrained.safetensors"))
    for case in CASES:
        model = _shard(_model(*case))
        history, local = _train(model, ids)
        results[case] = {"history": history, "local_numel": local, **_analysis(model)}
        ns.save_masks(model, os.path.join(out_dir, f"sharded-{'-'.join(map(str, case))}.safetensors"))
    # The reverse: masks trained in one process load into a sharded model.
    case = HEADS_HC
    model = _shard(_model(*case))
    ns.load_masks(model, os.path.join(out_dir, "single.safetensors"))
    results["loaded"] = _full(model)
    try:
        ns.bake(model)
    except ValueError as e:
        results["bake_error"] = str(e)
    try:
        ns.evaluate_baselines(model, lambda f: f(ids).logits.sum(), nr.split(nr.key(1), K), ablation="randomly_sampled")
    except ValueError as e:
        results["baselines_error"] = str(e)
    # The documented recipe: gather into an unsharded copy, split the keys over the ranks.
    copy = _model(*case)
    ns.load_masks(copy, os.path.join(out_dir, "single.safetensors"))
    x = _batch()
    results["baselines"] = evaluate_baselines_split(copy, lambda f: f(x).logits.mean(), nr.split(nr.key(1), K),
                                                    ablation="randomly_sampled")
    # Masks injected into an already sharded model would sit beside DTensor weights.
    try:
        ns.inject_masks(_shard(_gpt2()), Conv1D, key=0)
    except ValueError as e:
        results["inject_error"] = str(e)
    # Blocks sharded but not the root: its masks would not be sharded with the rest.
    half = _model(*CASES[0])
    fully_shard(half.transformer.h[0])
    try:
        ns.save_masks(half, os.path.join(out_dir, "never.safetensors"))
    except ValueError as e:
        results["mixed_error"] = str(e)
    results["draws"] = _sharded_draws()
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "rank0.pt"))


@pytest.mark.distributed
def test_fsdp_mask_training_io_and_analysis_match_one_process():
    ids = _batch()
    with tempfile.TemporaryDirectory() as out:
        single = {}
        for case in CASES:
            model = _model(*case)
            history, local = _train(model, ids)
            single[case] = {"history": history, "local_numel": local, **_analysis(model), "model": model}
            ns.save_masks(model, os.path.join(out, f"single-{'-'.join(map(str, case))}.safetensors"))
        ns.save_masks(single[HEADS_HC]["model"], os.path.join(out, "single.safetensors"))
        run_ranks(_worker, out, WORLD)
        got = torch.load(os.path.join(out, "rank0.pt"))
        for case in CASES:
            name = "-".join(map(str, case))
            # A file written by the sharded model loads into an unsharded one.
            fresh = _model(*case)
            ns.load_masks(fresh, os.path.join(out, f"sharded-{name}.safetensors"))
            for n, p in fresh.named_parameters():
                if n.endswith("mask_params"):
                    assert torch.equal(p, got[case]["history"][-1][n]), (case, n)
        # The sharded model writes the very file the unsharded one does.
        ns.save_masks(_model(*HEADS_HC), os.path.join(out, "untrained.safetensors"))
        with open(os.path.join(out, "untrained.safetensors"), "rb") as a, \
                open(os.path.join(out, "sharded-untrained.safetensors"), "rb") as b:
            assert a.read() == b.read()

    x = _batch()
    for case in CASES:
        want, have = single[case], got[case]
        for step, (w, h) in enumerate(zip(want["history"], have["history"])):
            assert w.keys() == h.keys()
            for n in w:
                # Adam turns the gradients' rounding (two half-batch means averaged vs one mean)
                # into parameter differences of about lr x relative rounding.
                torch.testing.assert_close(h[n], w[n], rtol=1e-4, atol=1e-5, msg=f"{case} step {step}: {n}")
        moved = [n for n in want["history"][0] if not torch.equal(want["history"][-1][n], _model(*case).state_dict()[n])]
        assert moved, f"{case}: nothing trained"
        # Theta and its two Adam moments: split over the ranks (dim 0, rounded up per rank).
        if want["local_numel"]:
            assert have["local_numel"] < want["local_numel"]
            assert have["local_numel"] >= want["local_numel"] // WORLD
        assert have["l0"]["total_l0"] == pytest.approx(want["l0"]["total_l0"])
        assert have["l0"]["layer_max_l0"] == want["l0"]["layer_max_l0"]
        for n, h in want["subnetwork"].items():
            assert torch.equal(have["subnetwork"][n], h), (case, n)
    single_model = single[HEADS_HC]["model"]
    for n, p in single_model.named_parameters():
        assert torch.equal(got["loaded"][n], p.detach()), n
    assert "gather first" in got["bake_error"].lower() and "bake" in got["bake_error"]
    assert "already sharded" in got["inject_error"] and "inject masks first" in got["inject_error"]
    assert "are not" in got["mixed_error"] and "root" in got["mixed_error"]
    h = _subnetwork_h()
    for dim in (0, 1):
        assert torch.equal(got["draws"][dim, "noise"], _gate_noise(nr.key(4), h))
        for sampler in (randomly_sampled_mask, complement_sampled_mask):
            assert torch.equal(got["draws"][dim, sampler.__name__], sampler(nr.key(4), h)), sampler.__name__
    assert "evaluate_baselines_split" in got["baselines_error"] or "gather first" in got["baselines_error"].lower()
    want_base = ns.evaluate_baselines(single_model, lambda f: f(x).logits.mean(), nr.split(nr.key(1), K),
                                      ablation="randomly_sampled")
    torch.testing.assert_close(got["baselines"], want_base)


def test_activation_checkpointing_recompute_draws_the_hard_concrete_noise_of_its_forward():
    # Large models train with activation checkpointing: the forward recomputed in backward must
    # use the very gates of the first run (else the gradient is of another mask), and the noise
    # step must advance once per step.
    from torch.utils.checkpoint import checkpoint

    def grads(checkpointed):
        model = _model("hard_concrete", "weight", "weight", True)
        ids = _batch()
        for _ in range(2):
            run = (lambda i: model(input_ids=i, labels=i).loss)
            loss = checkpoint(run, ids, use_reentrant=False) if checkpointed else run(ids)
            loss.backward()
        layer = model.transformer.h[0].mlp.c_fc
        return layer.weight_mask_params.grad, int(layer.noise_step)

    (plain, steps), (ckpt, ckpt_steps) = grads(False), grads(True)
    assert steps == ckpt_steps == 2
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=0)
