"""``CircuitMask``: the trainable mask parameters of a graph's edges, nodes or units, one strategy row.

The strategy is any row of :data:`neurosurgeon.functional.STRATEGIES` with parameters: its soft
mask, hard mask and L0 term are the row's own functions, applied entry by entry. A node mask has
one parameter per writer and stands for its tied edge mask; a unit mask one per unit of the
graph's units (a writer not split is one unit), counted unit by unit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from ..functional import random as nr
from ..functional.edges import tie_nodes, top_k_circuit
from ..functional.layer import elementwise_unit
from ..functional._checks import table_row
from ..functional.strategies import resolve_hparams, strategy_row
from .graph import CircuitGraph

__all__ = ["CircuitMask", "LEVELS", "level_row"]


class Level(NamedTuple):
    """One row of :data:`LEVELS`."""

    parameters: Callable[[CircuitGraph], int]  # how many a graph has
    keyword: str  # circuit_forward's argument taking the mask
    counts: Callable[[CircuitGraph], int]  # what the mask and the L0 term count: edges or units
    tied: bool  # whether a parameter stands for all of its writer's edges
    groups: Callable[[CircuitGraph], tuple[int, ...]] | None  # contiguous groups the in_degree null keeps


#: What one parameter gates: one edge, every outgoing edge of one writer, or one unit.
LEVELS: dict[str, Level] = {
    "edge": Level(lambda g: g.num_edges, "mask", lambda g: g.num_edges, False, lambda g: g.in_degrees),
    "node": Level(lambda g: len(g.writers), "node_mask", lambda g: g.num_edges, True, None),
    "unit": Level(lambda g: g.num_units, "unit_mask", lambda g: g.num_units, False, lambda g: g.unit_sizes),
}


def level_row(level: str) -> Level:
    """The :data:`LEVELS` row of ``level``; ValueError naming the levels otherwise."""
    return table_row("level", level, LEVELS)


class CircuitMask(nn.Module):
    """Mask parameters theta over ``graph``'s edges or nodes.

    Args:
        graph: the circuit graph.
        strategy: a strategy with parameters (``hard_concrete``, ``continuous_sparsification``, ...).
        level: a row of :data:`LEVELS`: ``"edge"`` (one theta per edge), ``"node"`` (one per
            writer, tied over its edges) or ``"unit"`` (one per unit of the graph's units).
        hparams: the strategy's hyper-parameters (defaults from its row).

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> graph = circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32)))
        >>> CircuitMask(graph).theta.shape
        torch.Size([110])
    """

    def __init__(self, graph: CircuitGraph, *, strategy: str = "hard_concrete", level: str = "edge", **hparams: Any):
        super().__init__()
        row = strategy_row(strategy)
        if not row.has_params:
            raise ValueError(f"strategy {strategy!r} has no trainable parameters; circuits train theta")
        n = level_row(level).parameters(graph)
        self.graph, self.strategy, self.level = graph, strategy, level
        self.hparams = resolve_hparams(strategy, hparams)
        self._unit = elementwise_unit((n,))
        self.theta = nn.Parameter(torch.full((n,), float(row.init(unit=self._unit, **self.hparams))))
        self.register_buffer("_writer_of_edge", graph.writer_of_edge(), persistent=False)

    @property
    def size(self) -> int:
        """What the mask and its L0 term count: the graph's edges, or its units at unit level."""
        return LEVELS[self.level].counts(self.graph)

    def _edges(self, values: torch.Tensor) -> torch.Tensor:
        return tie_nodes(values, self._writer_of_edge) if LEVELS[self.level].tied else values

    def gates(self, key: torch.Tensor | None = None) -> torch.Tensor:
        """The training mask, one value per parameter (edge, writer or unit); a strategy that
        draws noise needs ``key``."""
        row = strategy_row(self.strategy)
        if row.needs_key and key is None:
            raise ValueError(f"strategy {self.strategy!r} draws noise: pass key= (e.g. fold_in(key, step))")
        return row.soft(self.theta, key, unit=self._unit, **self.hparams)

    def soft(self, key: torch.Tensor | None = None) -> torch.Tensor:
        """The training mask over edges ``(edges,)`` (a node mask tied over its edges; at unit
        level over units)."""
        return self._edges(self.gates(key))

    def forward_masks(self, key: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The training mask as :func:`~neurosurgeon.circuits.circuit_forward`'s keyword:
        ``mask=`` over edges, ``node_mask=`` over writers (cheaper, and what a post-norm model
        takes) or ``unit_mask=`` over units."""
        return {LEVELS[self.level].keyword: self.gates(key)}

    def hard(self) -> torch.Tensor:
        """The strategy's binary mask over edges ``(edges,)`` (at unit level over units)."""
        return self._edges(strategy_row(self.strategy).hard(self.theta.detach(), unit=self._unit, **self.hparams))

    def top_k(self, k: int) -> torch.Tensor:
        """The circuit of exactly ``k`` edges (node level: ``k`` writers, over edges; unit level:
        ``k`` units, over units) of largest theta."""
        return self._edges(top_k_circuit(self.theta.detach(), k))

    def l0(self) -> torch.Tensor:
        """The strategy's expected number of kept edges (node level: each writer counts its
        edges; unit level: kept units)."""
        row = strategy_row(self.strategy)
        if not LEVELS[self.level].tied:
            return row.l0(self.theta, unit=self._unit, **self.hparams)
        # A writer's L0 term counts once per edge it gates: its out-degree.
        out_degree = torch.bincount(self._writer_of_edge, minlength=self.theta.shape[0]).to(self.theta.dtype)
        one = elementwise_unit((1,))
        per_writer = torch.func.vmap(lambda t: row.l0(t[None], unit=one, **self.hparams))(self.theta)
        return (per_writer * out_degree).sum()

    def extra_repr(self) -> str:
        return f"{self.level}s={self.theta.shape[0]}, strategy={self.strategy!r}"
