"""What an ablated writer writes instead, a_w: one row per kind, computed once per batch.

| kind     | a_w                                                                          |
|----------|------------------------------------------------------------------------------|
| zero     | 0                                                                            |
| mean     | w's mean output over a reference set (over examples and positions, or per position) |
| resample | w's output on the paired corrupted input (row i of ``corrupted`` pairs row i) |
| learned  | a trained constant per writer (optimal ablation, Li & Janson 2024, arXiv 2409.09951) |

On a graph with units the split units get the same kind of value for their activations, and
the result is a :class:`~neurosurgeon.circuits.forward.UnitAblation` (writers, activations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .forward import UnitAblation, circuit_forward
from .graph import CircuitGraph

__all__ = ["ABLATION_KINDS", "ablation_values", "learned_ablation"]


def _writers(model, graph, ids, attention_mask=None) -> UnitAblation:
    # Constants of the batch: computed by the full model, outside any gradient. Activations
    # (B, T, units) get a writers-like leading axis of 1, so one reduction serves both.
    with torch.no_grad():
        out = circuit_forward(model, graph, ids, attention_mask=attention_mask, return_writers=True)
    return UnitAblation(out.writers, None if out.activations is None else out.activations[None])


def _each(values: UnitAblation, fn: Callable[[torch.Tensor], torch.Tensor]) -> UnitAblation:
    return UnitAblation(*(None if v is None else fn(v) for v in values))


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
        return _each(h, lambda v: v.mean(1, keepdim=True))
    return _each(h, lambda v: v.mean((1, 2), keepdim=True))


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
                    per_position: bool = False, attention_mask: torch.Tensor | None = None):
    """The ablated values a ``(writers, B or 1, T or 1, D)`` for one batch (None for zero ablation);
    on a graph with units, a :class:`~neurosurgeon.circuits.forward.UnitAblation` whose activations
    ``(B or 1, T or 1, graph.num_activations)`` are the split units' values of the same kind.

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
    values = ABLATION_KINDS[kind](model, graph, input_ids, reference=reference, corrupted=corrupted,
                                  per_position=per_position, attention_mask=attention_mask)
    if values is None:
        return None
    writers, activations = values
    return writers if not graph.num_activations else UnitAblation(writers, activations[0])


def learned_ablation(model: nn.Module, graph: CircuitGraph, *, init=None):
    """A trainable constant per writer, ``(writers, 1, 1, D)``: optimal ablation's a_w; on a graph
    with units, a :class:`~neurosurgeon.circuits.forward.UnitAblation` of two parameters, the
    second a constant per split unit ``(1, 1, graph.num_activations)``.

    Args:
        init: starting values broadcastable to that shape (e.g. a mean ablation's, the same
            structure); default zeros.
    """
    p = next(model.parameters())
    shapes = UnitAblation((len(graph.writers), 1, 1, model.config.hidden_size), (1, 1, graph.num_activations))
    inits = init if isinstance(init, UnitAblation) else UnitAblation(init, None)
    values = []
    for shape, start in zip(shapes, inits):
        value = torch.zeros(shape, dtype=p.dtype, device=p.device)
        values.append(nn.Parameter(value if start is None else value + start.detach().to(value)))
    return values[0] if not graph.num_activations else UnitAblation(*values)
