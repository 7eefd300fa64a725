"""The analysis both subcommands run: discover a subnetwork for one sub-task, then test it.

Discovery trains mask parameters (base frozen) to solve the target sub-task with an L0
penalty ``lambda * L0 / max_L0`` (lambda times the expected density), annealing the
continuous-sparsification temperature geometrically to ``final_temp`` over the epochs.

Testing evaluates every sub-task under: the full model; the subnetwork alone; the model with
the subnetwork zero-ablated or random-ablated; and K random baselines that remove as many
weights as the subnetwork holds, drawn from all weights (``randomly_sampled``) or from the
weights outside it (``complement_sampled``), all K in one vmapped pass. The empirical p-value
of an ablation is ``(1 + #{baselines with accuracy <= the ablated subnetwork's}) / (K + 1)``:
small when removing the subnetwork hurts more than removing random weights. What makes these
numbers meaningless (a model at chance, degenerate baselines, a subnetwork too large for
complement sampling) is found here too and reported as warnings (``_warnings``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .. import model as ns
from ..functional import random as nr
from ..functional.strategies import STRATEGIES
from ..model.baselines import auto_chunk_size
from ..model.schedule import anneals_temperature
from ..modules.cache import soft_masks_for_l0
from . import _warnings
from .task import Examples

__all__ = ["MaskConfig", "METHOD_DEFAULTS", "discover", "evaluate", "CONDITIONS", "BASELINES"]

CONDITIONS = ("full", "subnetwork", "zero_ablate", "random_ablate")
BASELINES = ("randomly_sampled", "complement_sampled")

LogitsFn = Callable[[nn.Module, Examples], torch.Tensor]


#: Per-method defaults of the L0 weight and theta's initial value (tuned on the demo: ~7% / ~15%
#: density), by strategy name: a table lookup, so a method is never told apart by comparing names.
METHOD_DEFAULTS = {"continuous_sparsification": {"l0_lambda": 1.0, "mask_init": 1.0},
                   "hard_concrete": {"l0_lambda": 4.0, "mask_init": 0.9}}


@dataclass
class MaskConfig:
    method: str = "continuous_sparsification"
    epochs: int = 10
    steps_per_epoch: int = 30
    batch_size: int = 128
    lr: float = 0.05
    l0_lambda: float = 1.0
    final_temp: float = 200.0
    init: float | None = None  # theta's initial value, in the method's own knob (METHOD_DEFAULTS when None)
    seed: int = 0

    def hparams(self) -> dict:
        """The layer keyword of theta's initial value (the strategy row's ``init_hparam``:
        ``mask_init_value`` for CS, ``mask_init_percentage`` for HC) set to ``init``."""
        knob = STRATEGIES[self.method].init_hparam
        if knob is None:
            return {}
        return {knob: METHOD_DEFAULTS[self.method]["mask_init"] if self.init is None else self.init}


def _scorer(data: Examples, n_subtasks: int):
    """score(logits) -> per-sub-task accuracy ``(S,)``; no data-dependent shapes, so vmap applies."""
    onehot = nn.functional.one_hot(data.subtask, n_subtasks).to(torch.float32)
    counts = onehot.sum(0).clamp(min=1)

    def score(logits: torch.Tensor) -> torch.Tensor:
        correct = (logits.argmax(-1) == data.labels).to(torch.float32)
        return (correct @ onehot) / counts  # exact counts first, so 500/500 reads 1.0

    return score


def _accuracy_fn(logits_fn: LogitsFn, data: Examples, n_subtasks: int):
    """fn(forward) -> per-sub-task accuracy ``(S,)``, where ``forward`` is the model or a callable
    running it (as :func:`neurosurgeon.evaluate_baselines` passes)."""
    score = _scorer(data, n_subtasks)
    return lambda forward: score(logits_fn(forward, data))


def _density(model: nn.Module) -> float:
    sub = ns.subnetwork(model)
    kept = sum(int(h.sum()) for h in sub.values())
    total = sum(h.numel() for h in sub.values())
    return kept / max(total, 1)


def discover(model: nn.Module, names: list[str], train: Examples, monitor: Examples, logits_fn: LogitsFn,
             cfg: MaskConfig, *, progress, log) -> list[dict]:
    """Inject masks on ``names`` and train them on ``train`` (target sub-task only).

    Returns the per-epoch history: loss, cross-entropy, hard-mask accuracy on ``monitor``,
    density of the hard mask and the temperature in effect.
    """
    layers = ns.inject_masks(model, names, strategy=cfg.method, key=nr.key(cfg.seed), freeze_base=True,
                             **cfg.hparams())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    max_l0 = sum(m.calculate_max_l0() for m in ns.mask_layers(model).values())
    schedule = None
    if anneals_temperature(cfg.method):
        schedule = ns.TemperatureSchedule(cfg.final_temp, cfg.epochs)
        schedule.start(model)
    g = torch.Generator().manual_seed(cfg.seed)
    acc_fn = _accuracy_fn(logits_fn, monitor, 1)
    history = []
    batches = iter(())
    with progress(total=cfg.epochs * cfg.steps_per_epoch, desc=f"discover ({cfg.method})") as bar:
        for epoch in range(cfg.epochs):
            model.train()
            total = ce_total = 0.0
            for _ in range(cfg.steps_per_epoch):
                batch = next(batches, None)
                if batch is None:
                    batches = train.batches(cfg.batch_size, g)
                    batch = next(batches)
                with soft_masks_for_l0():  # forward first: the L0 term sums the soft masks it made
                    ce = nn.functional.cross_entropy(logits_fn(model, batch), batch.labels)
                    l0 = ns.l0_penalty(model)
                loss = ce + cfg.l0_lambda * l0 / max_l0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                ce_total += ce.item()
                bar.update(1)
            temperature = float(next(iter(layers.values())).temperature)
            model.eval()
            with torch.no_grad():
                acc = float(acc_fn(model)[0])
            row = {"epoch": epoch + 1, "loss": total / cfg.steps_per_epoch, "cross_entropy": ce_total / cfg.steps_per_epoch,
                   "accuracy": acc, "density": _density(model), "temperature": temperature}
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{acc:.3f}", density=f"{row['density']:.4f}")
            log(f"  epoch {epoch + 1:>3}/{cfg.epochs}  loss {row['loss']:.4f}  acc({monitor.subtasks[0]}) {acc:.3f}  "
                f"density {row['density']:.4f}  temp {temperature:.3g}")
            if schedule is not None:
                schedule.step(model)
    model.eval()
    return history


def evaluate(model: nn.Module, test: Examples, logits_fn: LogitsFn, *, seeds: int, seed: int,
             chunk_size: int | None = None) -> dict:
    """Accuracies per condition and sub-task, the K baselines, the empirical p-values, and the
    warnings that say which of these numbers are not meaningful."""
    subtasks = list(test.subtasks)
    fn = _accuracy_fn(logits_fn, test, len(subtasks))
    model.eval()
    out: dict = {"conditions": {}, "baselines": {}, "p_values": {}}
    with torch.no_grad():
        ns.set_use_masks(model, False)
        full_logits = logits_fn(model, test)
        out["conditions"]["full"] = _scorer(test, len(subtasks))(full_logits)
        ns.set_use_masks(model, True)
        for ablation, cond in (("none", "subnetwork"), ("zero_ablate", "zero_ablate"), ("random_ablate", "random_ablate")):
            ns.set_ablation(model, ablation)
            out["conditions"][cond] = fn(model)
        ns.set_ablation(model, "none")
    # Found before the baselines run, so complement sampling is not even tried when it cannot work.
    units = ns.subnetwork(model, broadcast=False)
    overflow = _warnings.complement_overflow(units)
    keys = nr.split(nr.key(seed), seeds)
    if chunk_size is None:  # fn closes over the test batch, so size the chunks for it here
        chunk_size = auto_chunk_size(model, seeds, inputs=test.input_ids)
    timings = {}
    for b in BASELINES:
        t = time.perf_counter()
        if b == "complement_sampled" and overflow:
            out["baselines"][b] = None
            out.setdefault("baseline_errors", {})[b] = (
                f"the subnetwork keeps more than half the units of {len(overflow)} masked tensor(s); see warnings")
            continue
        try:
            out["baselines"][b] = ns.evaluate_baselines(model, fn, keys, ablation=b, chunk_size=chunk_size)
        except ValueError as e:  # complement_sampled: the subnetwork is larger than its complement
            out["baselines"][b] = None
            out.setdefault("baseline_errors", {})[b] = str(e)
        timings[b] = time.perf_counter() - t
    ns.set_ablation(model, "none")
    for cond in ("zero_ablate", "random_ablate"):
        acc = out["conditions"][cond]
        out["p_values"][cond] = {}
        for b, values in out["baselines"].items():
            if values is None:
                continue
            rank = (values <= acc + 1e-9).sum(0)
            out["p_values"][cond][b] = (rank + 1).double() / (values.shape[0] + 1)
    out["baseline_seconds"] = timings
    res = _to_python(out, subtasks)
    res["chance"] = _warnings.chance_levels(test.labels, test.subtask, subtasks, int(full_logits.shape[-1]))
    res["mask_units"] = {"kept": sum(int(torch.count_nonzero(h)) for h in units.values()),
                         "total": sum(h.numel() for h in units.values())}
    res["complement_overflow"] = overflow
    res["warnings"], res["p_meaningful"] = _warnings.assess(res, target=subtasks[0])
    return res


def _to_python(out: dict, subtasks: list[str]) -> dict:
    def per_task(t: torch.Tensor):
        return {s: float(t[i]) for i, s in enumerate(subtasks)}

    res: dict = {"conditions": {c: per_task(v) for c, v in out["conditions"].items()}, "baselines": {}, "p_values": {}}
    for b, values in out["baselines"].items():
        if values is None:
            res["baselines"][b] = None
            continue
        res["baselines"][b] = {
            s: {"mean": float(values[:, i].mean()),
                "std": float(values[:, i].std()) if values.shape[0] > 1 else 0.0,
                "values": [float(v) for v in values[:, i]]}
            for i, s in enumerate(subtasks)
        }
    for cond, d in out["p_values"].items():
        res["p_values"][cond] = {b: per_task(p) for b, p in d.items()}
    if "baseline_errors" in out:
        res["baseline_errors"] = out["baseline_errors"]
    res["baseline_seconds"] = out["baseline_seconds"]
    return res


def layer_densities(model: nn.Module) -> dict[str, dict]:
    """Kept / total weights of the hard subnetwork, per masked layer."""
    out: dict[str, dict] = {}
    for name, h in ns.subnetwork(model).items():
        layer = name.rsplit(".", 1)[0]
        d = out.setdefault(layer, {"kept": 0, "total": 0})
        d["kept"] += int(h.sum())
        d["total"] += h.numel()
    for d in out.values():
        d["density"] = d["kept"] / max(d["total"], 1)
    return out
