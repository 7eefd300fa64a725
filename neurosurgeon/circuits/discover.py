"""Circuit discovery: train a graph's mask parameters on a task, then keep exactly k edges.

The loss is the task metric of the masked model plus either an L0 penalty (``l0_lambda * E[L0]``)
or a target sparsity as a Lagrangian (Bhaskar et al. 2024, after Wang et al. 2020, arXiv
1910.04732, Eq. 6):

    L = task + lambda_1 (s - t) + lambda_2 (s - t)^2,

s the expected fraction of edges (at unit level, units) removed, t the target ramped linearly from 0 over the warm-up,
and the lambdas trained by gradient ascent. Step s's noise is ``fold_in(key, s)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

import torch
import torch.nn as nn

from ..functional import random as nr
from .ablations import ablation_values
from .forward import UnitAblation, circuit_forward
from .graph import CircuitGraph
from .masks import CircuitMask
from .metrics import METRICS, metric_values

__all__ = ["train_circuit", "TrainedCircuit", "task_loss"]


@dataclass
class TrainedCircuit:
    """A trained :class:`CircuitMask` and its loss history (one entry per step)."""

    mask: CircuitMask
    history: list[dict[str, float]] = field(default_factory=list)
    ablation: torch.Tensor | UnitAblation | None = None


def task_loss(metric: str, logits: torch.Tensor, batch: Mapping[str, torch.Tensor], full_logits=None) -> torch.Tensor:
    """The mean of ``metric`` over the batch, signed so that lower is better."""
    values = metric_values(metric, logits, answers=batch.get("answers"), wrong=batch.get("wrong"),
                           full_logits=full_logits, positions=batch.get("positions"))
    return -values.mean() if METRICS[metric][1] else values.mean()


def _check_sparsity(target):
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target_sparsity must be in (0, 1] (the fraction of edges removed), got {target!r}")
    return float(target)


def train_circuit(model: nn.Module, graph: CircuitGraph, batches: Iterable[Mapping[str, torch.Tensor]], *,
                  key: torch.Tensor, steps: int, metric: str = "kl", ablation: str = "zero",
                  reference: torch.Tensor | None = None, strategy: str = "hard_concrete", level: str = "edge",
                  target_sparsity: float | None = None, l0_lambda: float = 0.0, warmup: int | None = None,
                  lr: float = 0.1, lambda_lr: float | None = None, mask: CircuitMask | None = None,
                  progress: bool = False, **hparams: Any) -> TrainedCircuit:
    """Train mask parameters over ``graph`` so the masked model does the task with few edges.

    Args:
        batches: dicts with ``input_ids`` (B, T) and, as the metric and ablation need them,
            ``corrupted`` (paired inputs, for resample), ``answers``, ``wrong``, ``positions``;
            cycled for ``steps`` steps.
        key: PRNG key; step s draws from ``fold_in(key, s)``.
        metric: a key of :data:`~neurosurgeon.circuits.metrics.METRICS`.
        ablation: ``zero``, ``mean`` (needs ``reference``), ``resample`` or ``learned`` (values
            trained with the masks, from the reference mean if given, else zero).
        strategy, level, hparams: the :class:`CircuitMask` to create (ignored if ``mask`` is given).
        target_sparsity: the fraction of edges to remove (at unit level, of units), in (0, 1]:
            trains with the Lagrangian.
        l0_lambda: weight of the expected L0 (edges or units kept) otherwise.
        warmup: steps over which the target rises from 0 (default: four fifths of ``steps``, as
            Edge Pruning's runs; the mask must be able to follow the target, or the multipliers wind up
            and the sparsity overshoots before it settles).
        lr: Adam's step for theta (and learned ablation values).
        lambda_lr: Adam's ascent step for the multipliers (default ``lr``).
        progress: show a progress bar (tqdm).

    Returns:
        :class:`TrainedCircuit`; discretise with ``result.mask.top_k(k)``.

    Raises:
        ValueError: a target sparsity outside (0, 1]; an unknown metric or ablation; a mean
            ablation with no reference; a resample without paired inputs.
    """
    target = _check_sparsity(target_sparsity)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {list(METRICS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    warmup = max(1, steps * 4 // 5 if warmup is None else warmup)
    lambda_lr = lr if lambda_lr is None else lambda_lr
    mask = mask if mask is not None else CircuitMask(graph, strategy=strategy, level=level, **hparams)
    p = next(model.parameters())
    mask = mask.to(device=p.device, dtype=p.dtype)
    params = [mask.theta]
    learned = None
    if ablation == "learned":
        from .ablations import learned_ablation

        init = ablation_values(model, graph, "mean", reference=reference) if reference is not None else None
        learned = learned_ablation(model, graph, init=init)
        params += list(learned) if isinstance(learned, UnitAblation) else [learned]
    optimizer = torch.optim.Adam(params, lr=lr)
    lambdas = torch.zeros(2, dtype=p.dtype, device=p.device, requires_grad=True)
    ascent = torch.optim.Adam([lambdas], lr=lambda_lr, maximize=True)
    result = TrainedCircuit(mask, ablation=learned)
    steps_iter = range(steps)
    if progress:
        from tqdm.auto import tqdm

        steps_iter = tqdm(steps_iter, desc="circuit", unit="step")
    batches = cycle(list(batches))
    for step, batch in zip(steps_iter, batches):
        ids = batch["input_ids"]
        with torch.no_grad():
            full = circuit_forward(model, graph, ids, attention_mask=batch.get("attention_mask")).output
        a = learned if learned is not None else ablation_values(
            model, graph, ablation, ids, reference=reference, corrupted=batch.get("corrupted"),
            attention_mask=batch.get("attention_mask"))
        logits = circuit_forward(model, graph, ids, ablated=a, attention_mask=batch.get("attention_mask"),
                                 **mask.forward_masks(nr.fold_in(key, step))).output
        task = task_loss(metric, logits, batch, full)
        kept = mask.l0()
        loss = task
        record = {"task": task.item(), "kept": kept.item()}
        if target is not None:
            sparsity = 1 - kept / mask.size
            t = target * min(1.0, (step + 1) / warmup)
            gap = sparsity - t
            loss = loss + lambdas[0] * gap + lambdas[1] * gap ** 2
            record.update(sparsity=sparsity.item(), target=t)
        elif l0_lambda:
            loss = loss + l0_lambda * kept
        # Gradients of the trained tensors only: the model's own weights get no .grad.
        trained = [*params, lambdas]
        for p_, g_ in zip(trained, torch.autograd.grad(loss, trained, allow_unused=True)):
            p_.grad = g_
        optimizer.step()
        ascent.step()
        record["loss"] = loss.item()
        result.history.append(record)
    return result
