"""Random circuits of a circuit's size: the null every circuit number is read against.

Two nulls: ``uniform`` keeps k edges drawn uniformly from all edges; ``in_degree`` keeps, for
each reader, as many of its in-edges as the circuit does, drawn uniformly among them. Circuit i
of K draws from ``split(key, K)[i]``, so a vmapped call equals a loop over the same keys.

At another level of :data:`~neurosurgeon.circuits.masks.LEVELS` the same draws run over its
parameters: ``uniform`` keeps k writers (node level) or k units (unit level); at unit level
``in_degree`` keeps each writer's count of units.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..functional import random as nr
from ..functional.edges import in_degree_circuit, random_circuit
from ..model.baselines import chunk_within
from .forward import circuit_forward
from .graph import CircuitGraph
from .masks import level_row

__all__ = ["NULLS", "random_circuits", "evaluate_circuits", "circuit_chunk_size", "null_summary"]

NULLS = ("uniform", "in_degree")


def random_circuits(key: torch.Tensor, graph: CircuitGraph, circuit: torch.Tensor, num: int, *,
                    null: str = "uniform", level: str = "edge") -> torch.Tensor:
    """``num`` random circuits ``(num, edges)`` of ``circuit``'s size, one vmapped draw.

    Args:
        key: PRNG key; circuit i draws from ``split(key, num)[i]``.
        circuit: the binary ``(edges,)`` circuit whose size (and, for ``in_degree``, whose
            readers' in-degrees) the null keeps; at node or unit level ``(writers,)`` or
            ``(units,)``.
        null: ``"uniform"`` or ``"in_degree"`` (at unit level: each writer's count of units).
        level: ``"edge"``, ``"node"`` or ``"unit"`` (what ``circuit`` gates).
    """
    row = level_row(level)
    if null not in NULLS:
        raise ValueError(f"null must be one of {NULLS}, got {null!r}")
    n = row.parameters(graph)
    if circuit.shape != (n,):
        raise ValueError(f"circuit must have shape ({n},) (one entry per {level}), got {tuple(circuit.shape)}")
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    keys = nr.split(key, num)
    if null == "uniform":
        k = int(circuit.sum())
        return torch.func.vmap(lambda kk: random_circuit(kk, n, k, dtype=circuit.dtype))(keys)
    if row.groups is None:
        raise ValueError(f"the in_degree null keeps counts within groups; a {level} mask has none (use uniform)")
    sizes = torch.tensor(row.groups(graph), device=circuit.device)
    kept = torch.segment_reduce(circuit, "sum", lengths=sizes).round().long()
    return torch.func.vmap(lambda kk: in_degree_circuit(kk, sizes, kept, dtype=circuit.dtype))(keys)


def check_chunk_size(chunk_size, *, optional: bool = True):
    """``chunk_size`` if it is a positive int, or None (the default chunk) when ``optional``; else a
    ValueError."""
    if chunk_size is None and optional:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int{' or None' if optional else ''}, got {chunk_size!r}")
    return chunk_size


def circuit_chunk_size(model: nn.Module, graph: CircuitGraph, input_ids: torch.Tensor, num_circuits: int) -> int:
    """The chunk size :func:`evaluate_circuits` uses when given none.

    Rule: the most circuits whose largest tensors of their own, one layer's attention readers'
    inputs (readers x tokens x width), fit 48 MiB together, at least 1 and at most
    ``num_circuits`` (the rule random baselines follow:
    :func:`~neurosurgeon.model.baselines.chunk_within`). A chunk of K circuits holds K times a
    circuit's tensors: past that size, each is memory the OS hands out afresh and faults in page by
    page, which on a CPU costs more than the batch saves (a GPU's caching allocator does not; pass
    a larger ``chunk_size`` there).
    """
    width = model.config.hidden_size  # the residual stream's width, every family's config names it
    per_circuit = graph.attention_readers * input_ids.numel() * width * next(model.parameters()).element_size()
    return chunk_within(per_circuit, num_circuits)


def evaluate_circuits(model: nn.Module, graph: CircuitGraph, circuits: torch.Tensor, input_ids: torch.Tensor,
                      score: Callable[[torch.Tensor], torch.Tensor], *, ablated=None,
                      attention_mask: torch.Tensor | None = None, chunk_size: int | None = None,
                      level: str = "edge") -> torch.Tensor:
    """``score`` of each circuit ``(K, edges)`` in one vmapped call: ``(K,)``.

    Args:
        score: logits -> 0-d tensor (e.g. a mean metric).
        chunk_size: circuits evaluated at once, vmapped (memory); default :func:`circuit_chunk_size`.
            At 1, each circuit is one plain call.
        level: what the circuits gate: ``"edge"``, ``"node"`` ``(K, writers)`` or ``"unit"``
            ``(K, units)``.
    """
    keyword = level_row(level).keyword
    if check_chunk_size(chunk_size) is None:
        chunk_size = circuit_chunk_size(model, graph, input_ids, circuits.shape[0])

    def one(mask):
        return score(circuit_forward(model, graph, input_ids, ablated=ablated, attention_mask=attention_mask,
                                     **{keyword: mask}).output)

    with torch.no_grad():
        if chunk_size == 1:  # one circuit at a time: vmap over one would only wrap the same call
            return torch.stack([one(mask) for mask in circuits])
        return torch.func.vmap(one, chunk_size=chunk_size)(circuits)


def null_summary(ours: float | torch.Tensor, null: torch.Tensor, *, higher_is_better: bool = True) -> dict[str, float]:
    """The null's median and 5-95% band, and the p-value of ``ours`` against it:
    (1 + #{null at least as good}) / (K + 1)."""
    null = null.detach().double().flatten()
    ours = float(ours)
    as_good = (null >= ours) if higher_is_better else (null <= ours)
    q = torch.quantile(null, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"value": ours, "null_median": float(q[1]), "null_q05": float(q[0]), "null_q95": float(q[2]),
            "p_value": (1 + int(as_good.sum())) / (len(null) + 1), "null_size": len(null)}
