"""``neurosurgeon demo``: the whole analysis on an embedded model and task, nothing to download."""

from __future__ import annotations

import time

import torch

from .. import __version__
from . import task as T
from ._run import Console, resolve_device, run_analysis, run_config, select_targets

__all__ = ["run_demo", "DEFAULT_TARGETS"]

#: Every attention and MLP projection of both blocks (8 GPT-2 Conv1D layers, 65,536 weights).
DEFAULT_TARGETS = ["transformer.h.*.attn.*", "transformer.h.*.mlp.*"]

N_TEST = 1000


def run_demo(args) -> dict:
    # A model this small is bound by per-op overhead: past two, intra-op threads only add
    # synchronisation, so the demo sets its own count rather than torch's default.
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run_demo(args)
    finally:
        torch.set_num_threads(threads)


def _run_demo(args) -> dict:
    t_start = time.perf_counter()
    console = Console(args.quiet)
    device = resolve_device(args.device)
    task = T.SyntheticTask(args.seed)
    console.log(f"neurosurgeon {__version__} demo: 2-layer GPT-2 on a two-sub-task problem (seed {args.seed}, {device})")
    console.log("  sub-task A 'add':  a b c d ADD  -> (a + b) mod 10")
    console.log("  sub-task B 'copy': a b c d COPY -> d")
    console.log(f"\n[1/3] Training the model on both sub-tasks ({args.train_steps} steps)")

    model = T.make_demo_model(args.seed).to(device)
    t = time.perf_counter()
    final_loss = T.train_model(model, task, steps=args.train_steps, progress=console.progress)
    t_train = time.perf_counter() - t

    test = task.sample(N_TEST, split="test").to(device)
    with torch.no_grad():
        correct = T.classify(model, test).argmax(-1) == test.labels
    base = {s: float(correct[test.subtask == i].float().mean()) for i, s in enumerate(task.subtasks)}
    console.log("  trained in {:.1f} s, test accuracy: {}".format(
        t_train, ", ".join(f"{s} {a:.3f}" for s, a in base.items())))

    names = select_targets(model, args.targets or DEFAULT_TARGETS)
    n_masks = args.epochs * args.steps_per_epoch * args.batch_size
    mask_train = task.sample(2 * n_masks, split="mask").of_subtask(0).to(device)
    monitor = task.sample(400, split="val").of_subtask(0).to(device)
    # The other sub-task's subnetwork, found the same way, shows how much of the model the two share.
    other = (task.sample(2 * n_masks, split="mask").of_subtask(1).to(device),
             task.sample(400, split="val").of_subtask(1).to(device))
    results = {
        "command": "demo",
        "neurosurgeon_version": __version__,
        "config": run_config(args, names, str(device), default_targets=DEFAULT_TARGETS),
        "model": {"description": "GPT2ForSequenceClassification, 2 layers, 4 heads, width 64, vocab 13",
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "train_steps": args.train_steps, "final_train_loss": final_loss},
        "timing": {"train_model_s": t_train},
    }
    if not args.no_circuit:
        from .demo_circuit import run_circuit_demo

        t = time.perf_counter()
        results["circuit"] = run_circuit_demo(args, console, device)
        results["timing"]["circuit_s"] = time.perf_counter() - t
    return run_analysis(model=model, names=names, mask_train=mask_train, monitor=monitor, test=test,
                        logits_fn=T.classify, args=args, console=console, results=results, t_start=t_start,
                        other=other)
