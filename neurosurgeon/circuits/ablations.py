"""What an ablated writer writes instead, a_w: one row per kind, computed once per batch.

| kind     | a_w                                                                          |
|----------|------------------------------------------------------------------------------|
| zero     | 0                                                                            |
| mean     | w's mean output over a reference set (over examples and positions, or per position) |
| resample | w's output on the paired corrupted input (row i of ``corrupted`` pairs row i) |
| learned  | a trained constant per writer (optimal ablation, Li & Janson 2024, arXiv 2409.09951) |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .forward import circuit_forward
from .graph import CircuitGraph

__all__ = ["ABLATION_KINDS", "ablation_values", "learned_ablation"]


def _writers(model, graph, ids, attention_mask=None) -> torch.Tensor:
    # Constants of the batch: computed by the full model, outside any gradient.
    with torch.no_grad():
        return circuit_forward(model, graph, ids, attention_mask=attention_mask, return_writers=True).writers


def _zero(model, graph, input_ids, *, reference, corrupted, per_position, attention_mask):
    return None


def _mean(model, graph, input_ids, *, reference, corrupted, per_position, attention_mask):
    if reference is None:
        raise ValueError("a mean ablation needs reference= (token ids of the reference set, (N, T)) to average over")
    h = _writers(model, graph, reference)
    if per_position:
        if input_ids is not None and reference.shape[1] != input_ids.shape[1]:
            raise ValueError(f"a per-position mean needs reference prompts of the inputs' length {input_ids.shape[1]}, "
                             f"got {reference.shape[1]}")
        return h.mean(1, keepdim=True)
    return h.mean((1, 2), keepdim=True)


def _resample(model, graph, input_ids, *, reference, corrupted, per_position, attention_mask):
    if corrupted is None or input_ids is None or corrupted.shape != input_ids.shape:
        raise ValueError("a resample ablation pairs input i with corrupted input i: give corrupted= with the inputs' "
                         f"shape {None if input_ids is None else tuple(input_ids.shape)}, got "
                         f"{None if corrupted is None else tuple(corrupted.shape)}")
    return _writers(model, graph, corrupted, attention_mask)


def _learned(model, graph, input_ids, *, reference, corrupted, per_position, attention_mask):
    raise ValueError("learned ablation values are parameters: make them with learned_ablation(model, graph) and train them")


#: kind -> (model, graph, input_ids, *, reference, corrupted, per_position, attention_mask) -> a or None.
ABLATION_KINDS: dict[str, Callable[..., torch.Tensor | None]] = {
    "zero": _zero, "mean": _mean, "resample": _resample, "learned": _learned,
}


def ablation_values(model: nn.Module, graph: CircuitGraph, kind: str, input_ids: torch.Tensor | None = None, *,
                    reference: torch.Tensor | None = None, corrupted: torch.Tensor | None = None,
                    per_position: bool = False, attention_mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The ablated values a ``(writers, B or 1, T or 1, D)`` for one batch (None for zero ablation).

    Args:
        kind: a key of :data:`ABLATION_KINDS` (``learned`` values come from :func:`learned_ablation`).
        input_ids: the batch the values serve (resample pairs it row by row).
        reference: ``(N, T)`` token ids whose mean output a mean ablation writes.
        corrupted: ``(B, T)`` corrupted inputs, row i paired with ``input_ids`` row i.
        per_position: a mean ablation keeps one mean per position.

    Raises:
        ValueError: an unknown kind; a mean with no reference; a resample with unpaired inputs.
    """
    if kind not in ABLATION_KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}; allowed: {list(ABLATION_KINDS)}")
    return ABLATION_KINDS[kind](model, graph, input_ids, reference=reference, corrupted=corrupted,
                                per_position=per_position, attention_mask=attention_mask)


def learned_ablation(model: nn.Module, graph: CircuitGraph, *, init: torch.Tensor | None = None) -> nn.Parameter:
    """A trainable constant per writer, ``(writers, 1, 1, D)``: optimal ablation's a_w.

    Args:
        init: starting values broadcastable to that shape (e.g. a mean ablation's); default zeros.
    """
    p = next(model.parameters())
    width = model.config.hidden_size
    value = torch.zeros(len(graph.writers), 1, 1, width, dtype=p.dtype, device=p.device)
    if init is not None:
        value = value + init.detach().to(value)
    return nn.Parameter(value)
