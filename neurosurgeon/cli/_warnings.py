"""When an analysis's numbers mean nothing, and why: each finding is one warning entry
``{"kind", "message", "data"}`` for the console and ``results.json``.

- ``full_model_at_chance``: the full model scores at or below chance on a sub-task, where chance
  is the larger of ``1 / C`` (C = the number of classes the model chooses among) and the share
  of the sub-task's most frequent label among its test examples. The model does not do that
  sub-task, so its subnetwork and ablation numbers say nothing about how it does it.
- ``degenerate_baselines``: the K random baselines of a sampling mode all score the same on a
  sub-task (zero variance). The empirical p-value then only says on which side of one number
  the ablated subnetwork falls, so it is marked not meaningful.
- ``complement_sampled_impossible``: complement sampling removes, in each masked tensor, as many
  units as the subnetwork keeps there, drawn from the units outside it; a tensor whose
  subnetwork keeps more than half its units has too few outside.
- ``empty_subnetwork`` / ``whole_subnetwork``: the subnetwork keeps nothing or everything.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["chance_levels", "at_or_below_chance", "complement_overflow", "assess", "warning"]

#: Longest layer list shown on the console; results.json holds all of them.
_SHOWN = 8


def warning(kind: str, message: str, **data) -> dict:
    """One warning entry: its kind, a sentence for the console and the numbers behind it."""
    return {"kind": kind, "message": message, "data": data}


def chance_levels(labels: torch.Tensor, subtask: torch.Tensor, subtasks: list[str], n_classes: int) -> dict[str, dict]:
    """Chance accuracy per sub-task: ``max(1 / n_classes, majority-class share of its labels)``.

    Args:
        labels: class index per test example ``(N,)``.
        subtask: sub-task index per test example ``(N,)``.
        subtasks: the sub-task names, by index.
        n_classes: the number of classes the model chooses among.

    Returns:
        ``{name: {"chance", "n_classes", "majority_share", "n_examples"}}``; a sub-task without
        test examples has chance None.
    """
    out = {}
    for i, name in enumerate(subtasks):
        y = labels[subtask == i]
        n = int(y.numel())
        majority = int(torch.bincount(y, minlength=n_classes).max()) / n if n else None
        chance = max(1 / n_classes, majority) if n else None
        out[name] = {"chance": chance, "n_classes": n_classes, "majority_share": majority, "n_examples": n}
    return out


def at_or_below_chance(accuracy: float, level: dict) -> bool:
    """Whether ``accuracy`` is at or below ``level["chance"]`` (False when chance is unknown)."""
    # accuracies are float32 count ratios: 2/3 reads 0.66666669, above the exact chance 2/3
    return level["chance"] is not None and accuracy <= level["chance"] + 1e-6


def complement_overflow(units: Mapping[str, torch.Tensor]) -> list[dict]:
    """The masked tensors where complement sampling is impossible: more units kept than outside.

    Args:
        units: hard masks at mask-unit shape, ``subnetwork(model, broadcast=False)``.

    Returns:
        one row per such tensor: its name, ``units``, ``kept``, ``outside`` and ``max_kept``
        (``units // 2``, the most it may keep), with the densities now and at most.
    """
    rows = []
    for name, h in units.items():
        n, kept = h.numel(), int(torch.count_nonzero(h))
        if kept > n - kept:
            rows.append({"tensor": name, "units": n, "kept": kept, "outside": n - kept, "max_kept": n // 2,
                         "density": kept / n, "max_density": (n // 2) / n})
    return rows


def _complement_warning(rows: list[dict], kept: int, total: int) -> dict:
    excess = sum(r["kept"] - r["max_kept"] for r in rows)
    target_density = (kept - excess) / max(total, 1)
    width = max(len(r["tensor"]) for r in rows[:_SHOWN])
    shown = [f"    {r['tensor']:<{width}}  keeps {r['kept']:,} of {r['units']:,} ({r['density']:.1%}), "
             f"{r['outside']:,} outside; may keep at most {r['max_kept']:,}" for r in rows[:_SHOWN]]
    if len(rows) > _SHOWN:
        shown.append(f"    and {len(rows) - _SHOWN} more (all in results.json)")
    message = "\n".join([
        f"complement_sampled is impossible: each baseline removes from every masked tensor as many units as "
        f"the subnetwork keeps there, drawn from the units outside it, and {len(rows)} tensor(s) keep more "
        f"than lie outside:",
        *shown,
        f"It becomes possible with {excess:,} fewer units kept in these tensors (at most half of each): overall "
        f"density {kept / max(total, 1):.1%} -> at most {target_density:.1%}. Make the subnetwork sparser (a larger "
        f"--l0-lambda or more epochs), or leave these layers out of --targets.",
    ])
    return warning("complement_sampled_impossible", message, tensors=rows, excess_units=excess,
                   density=kept / max(total, 1), max_density=target_density)


def _degenerate(values: list[float]) -> bool:
    return max(values) - min(values) == 0.0


def assess(ev: dict, *, target: str) -> tuple[list[dict], dict]:
    """The warnings of one evaluation and which p-values mean something.

    Args:
        ev: :func:`neurosurgeon.cli._analysis.evaluate`'s result (conditions, baselines,
            p_values, chance, mask_units and complement_overflow).
        target: the sub-task the subnetwork was trained for.

    Returns:
        ``(warnings, p_meaningful)`` with ``p_meaningful[condition][mode][subtask]`` False when
        that sub-task's full model is at chance or the mode's baselines are degenerate there.
    """
    warnings = []
    kept, total = ev["mask_units"]["kept"], ev["mask_units"]["total"]
    if kept == 0:
        warnings.append(warning("empty_subnetwork", "the subnetwork is empty, so ablating it changes nothing; lower "
                                "--l0-lambda or train longer", kept=kept, total=total))
    elif kept == total:
        warnings.append(warning("whole_subnetwork", "the subnetwork holds every masked unit, so it is the whole "
                                "model; raise --l0-lambda or train longer to sparsify it", kept=kept, total=total))
    meaningful = {}
    full = ev["conditions"]["full"]
    for s, level in ev["chance"].items():
        c = level["chance"]
        meaningful[s] = c is not None and not at_or_below_chance(full[s], level)
        if c is None or meaningful[s]:
            continue
        why = (f"the larger of 1/{level['n_classes']} and the majority-class share {level['majority_share']:.3f} "
               f"of its {level['n_examples']} test examples")
        then = (" The subnetwork was trained for this sub-task: train or fine-tune the model on it first."
                if s == target else "")
        warnings.append(warning(
            "full_model_at_chance",
            f"the full model scores {full[s]:.3f} on {s!r}, at or below chance {c:.3f} ({why}): it does not do "
            f"this sub-task, so the subnetwork and ablation numbers there, p-values included, are not meaningful."
            + then, subtask=s, accuracy=full[s], **level))
    degenerate = {}
    for mode, stats in ev["baselines"].items():
        for s, st in (stats or {}).items():
            degenerate[mode, s] = _degenerate(st["values"])
            if degenerate[mode, s]:
                k = len(st["values"])
                warnings.append(warning(
                    "degenerate_baselines",
                    f"{f'all {k}' if k > 1 else 'the only'} {mode} baseline{'s' * (k > 1)} score{'s' * (k == 1)} "
                    f"{st['values'][0]:.3f} on {s!r} (zero variance): random "
                    f"removals never change the accuracy there (the model may answer one class whatever the "
                    f"input, or shrug them all off), so there is no spread to rank the ablated subnetwork in, "
                    f"and the p-values against {mode} on {s!r} are not meaningful",
                    mode=mode, subtask=s, k=k, value=st["values"][0]))
    if ev.get("complement_overflow"):
        warnings.append(_complement_warning(ev["complement_overflow"], kept, total))
    p_meaningful = {cond: {mode: {s: meaningful[s] and not degenerate[mode, s] for s in ps}
                           for mode, ps in by_mode.items()}
                    for cond, by_mode in ev["p_values"].items()}
    return warnings, p_meaningful
