"""Shared plumbing of the subcommands: errors, progress and logging, devices, and the
discover -> test -> write sequence that ``demo`` and ``analyze`` both end with (and, given a
second sub-task, the overlap of its subnetwork with the first's)."""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from .. import model as ns
from . import _analysis
from .plot import plot_results
from .report import format_table, format_warnings, write_results
from .task import Examples

__all__ = ["CLIError", "Console", "resolve_device", "select_targets", "run_config", "run_analysis", "subtask_overlap"]


class CLIError(Exception):
    """A user error: printed as ``neurosurgeon: error: ...`` with exit status 2, no traceback."""


class Console:
    """Progress bars (tqdm, on stderr) and log lines (stdout); both silenced by ``--quiet``."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def log(self, msg: str = "") -> None:
        if not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stdout)  # keeps an active progress bar intact

    def progress(self, total: int, desc: str):
        if self.quiet:
            return _NullBar()
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=True, mininterval=0.5, file=sys.stderr, dynamic_ncols=True)


class _NullBar(contextlib.AbstractContextManager):
    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def set_postfix(self, *a, **k):
        pass


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else must be a valid, available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {name!r} is not a device ({e}); use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"--device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def maskable_names(model: nn.Module) -> list[str]:
    """Names of the layers of ``model`` a mask can wrap, in ``named_modules`` order."""
    return [n for n, m in model.named_modules() if n and type(m) in ns.SUPPORTED_LAYERS]


def select_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Module names that ``--targets`` selects; a CLIError listing the maskable layers for a bad pattern."""
    from ..model.select import resolve_targets

    available = maskable_names(model)
    chosen: list[str] = []
    for p in patterns:
        try:
            hits = resolve_targets(model, [p])
        except (ValueError, TypeError) as e:
            shown = ", ".join(available[:12]) + (f", ... ({len(available)} in all)" if len(available) > 12 else "")
            raise CLIError(f"--targets {p!r} selects no maskable layer: {e}\n  maskable layers: {shown}\n"
                           "  patterns: '*' matches within one name part, '**' across parts") from None
        chosen += [h for h in hits if h not in chosen]
    return [n for n in available if n in chosen]


def run_config(args, names: list[str], device: str, *, default_targets) -> dict:
    """The ``config`` entry of ``results.json``: every option that shaped the numbers."""
    keys = ("method", "seeds", "epochs", "steps_per_epoch", "batch_size", "lr", "l0_lambda", "final_temp",
            "mask_init", "seed", "chunk_size", "train_steps", "threads")
    cfg = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    cfg.update(targets=list(args.targets or default_targets), layers=names, device=device)
    return cfg


def run_analysis(*, model: nn.Module, names: list[str], mask_train, monitor, test, logits_fn, args, console: Console,
                 results: dict, t_start: float, other=None) -> dict:
    """Discover the subnetwork, test it, print the table and write the three files into ``args.out``.

    ``other``: (training, monitoring) examples of the second sub-task; a subnetwork is then found
    for it too, on a copy of the model, and its overlap with the first is reported."""
    cfg = _analysis.MaskConfig(
        method=args.method, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        lr=args.lr, l0_lambda=args.l0_lambda, final_temp=args.final_temp, init=args.mask_init, seed=args.seed,
    )
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out {str(out)!r}: cannot create the output directory ({e.strerror})") from None

    target = test.subtasks[0]
    console.log(f"\n[2/3] Discovering a subnetwork for sub-task {target!r} in {len(names)} layers "
                f"({cfg.method}, L0 lambda {cfg.l0_lambda}, {cfg.epochs} epochs x {cfg.steps_per_epoch} steps)")
    t = time.perf_counter()
    unmasked = copy.deepcopy(model) if other is not None else None
    history = _analysis.discover(model, names, mask_train, monitor, logits_fn, cfg,
                                 progress=console.progress, log=console.log)
    t_discover = time.perf_counter() - t

    console.log(f"\n[3/3] Testing on {len(test)} held-out examples: 4 conditions + {args.seeds} random baselines "
                f"x 2 sampling modes (vmapped)")
    t = time.perf_counter()
    ev = _analysis.evaluate(model, test, logits_fn, seeds=args.seeds, seed=args.seed + 1, chunk_size=args.chunk_size)
    t_eval = time.perf_counter() - t

    layers = _analysis.layer_densities(model)
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    results.update({
        "subtasks": list(test.subtasks),
        "target_subtask": target,
        "n_test": {s: int((test.subtask == i).sum()) for i, s in enumerate(test.subtasks)},
        "discovery": {"history": history, "seconds": t_discover},
        "subnetwork": {"kept": kept, "total": total, "density": kept / max(total, 1), "layers": layers},
        "conditions": ev["conditions"],
        "baselines": ev["baselines"],
        "p_values": ev["p_values"],
    })
    if "baseline_errors" in ev:
        results["baseline_errors"] = ev["baseline_errors"]
    results.update({k: ev[k] for k in ("chance", "p_meaningful", "warnings")})
    if other is not None:
        t = time.perf_counter()
        results["overlap"] = subtask_overlap(model, unmasked, names, *other, logits_fn, cfg, subtasks=test.subtasks,
                                             console=console)
        results["timing"]["overlap_s"] = time.perf_counter() - t
    results["timing"].update({"discover_s": t_discover, "evaluate_s": t_eval, "baselines_s": ev["baseline_seconds"]})

    files = {"results": out / "results.json", "masks": out / "masks.safetensors", "plot": out / "subnetwork.png"}
    ns.save_masks(model, files["masks"])
    plot_results(results, files["plot"])
    results["files"] = {k: str(v) for k, v in files.items()}
    results["timing"]["total_s"] = time.perf_counter() - t_start
    write_results(results, files["results"])

    print()
    print(format_table(results))
    print()
    if results["warnings"]:
        print(format_warnings(results["warnings"]))
        print()
    print(f"wrote {files['plot']}, {files['masks']}, {files['results']}  "
          f"({results['timing']['total_s']:.1f} s)")
    return results


def subtask_overlap(model_a, model_b, names: list[str], train, monitor, logits_fn, cfg, *, subtasks,
                    console: Console) -> dict:
    """Discover ``model_b``'s subnetwork for the second sub-task the way ``model_a``'s was found for
    the first, and return their overlap against chance (the ``overlap`` entry of ``results.json``).

    Args:
        model_a: the model with the first sub-task's trained masks.
        model_b: an unmasked copy of the same model.
        names: the layers to mask; train, monitor: the second sub-task's examples.
        logits_fn, cfg: as for the first discovery.
        subtasks: the two sub-tasks' names, first one first.
        console: where the progress goes.
    """
    train, monitor = _as_target(train), _as_target(monitor)
    console.log(f"\n[overlap] Discovering a subnetwork for sub-task {subtasks[1]!r} the same way, to compare")
    _analysis.discover(model_b, names, train, monitor, logits_fn, cfg, progress=console.progress,
                       log=lambda msg: None)
    table = ns.compare_subnetworks(model_a, model_b)
    d = table.to_dict()
    return {"subtasks": list(subtasks[:2]), "unit": d["unit"], "total": d["total"], "layers": d["layers"],
            "heads": d["heads"]}


def _as_target(examples: Examples) -> Examples:
    """Examples of the second sub-task relabelled as sub-task 0, the one discovery trains for."""
    names = (examples.subtasks[1], examples.subtasks[0], *examples.subtasks[2:])
    return Examples(examples.input_ids, examples.attention_mask, examples.labels, torch.zeros_like(examples.subtask),
                    names)
