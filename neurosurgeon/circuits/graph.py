"""The computational graph of a transformer: writers, readers and the edges between them.

Writers, in order: the embeddings (``Resid Start``, or ``Tok Embed`` and ``Pos Embed``), then per
layer l its heads ``A{l}.{h}`` and its MLP ``MLP {l}``. Readers: per layer, each head's query
``A{l}.{h}.Q``, each key/value head's key and value inputs ``A{l}.{g}.K`` / ``A{l}.{g}.V``, the
MLP's input ``MLP {l}``, and the logits ``Resid End``. Edge ``"{writer}->{reader}"`` exists for
every writer before the reader (auto-circuit's names).

Grouped-query attention: the heads of a group share one key and one value projection, so a
layer has G key and G value readers (G = ``num_key_value_heads``), not H; an edge into
``A{l}.{g}.K`` reaches every query head of group g. With H = G this is plain multi-head attention.

A layer's MLP reads its own layer's heads, except in a parallel-residual block (GPT-NeoX's
``use_parallel_residual``), where it reads the stream its attention reads. So the edge count is

    E = sum_l [(H + 2G + 1)(e + l(H + 1)) + H s_l] + e + L(H + 1)

with s_l = 1 for a sequential block and 0 for a parallel one; for H = G and sequential blocks,
sum_l [(3H + 1)(e + l(H + 1)) + H] + e + L(H + 1).

Edges are ordered reader by reader (layer by layer: queries, keys, values, MLP; then the
logits), each reader's writers in writer order. A reader reads a prefix of the writers, so one
layer's attention block of the flat mask reshapes to ``(H + 2G, n)``.

Units: finer nodes inside writers, one row of :data:`FINE_UNITS` each. ``"value"`` splits each
head into its d value dimensions (``A{l}.{h}.v{j}``: feature j of the head's attention output,
before the output projection), ``"neuron"`` each MLP into its neurons (``MLP {l}.n{j}``: input
feature j of the MLP's output projection, the row's ``mlp_down``). Every other writer is one unit of its own name. A unit
mask is a node mask at that granularity, so units are ordered writer by writer, and one layer's
value units reshape to ``(H, d)`` (``"(h d) -> h d"``). The output projections' biases belong to
no unit: constants of the stream, as the attention bias is for heads.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import einops
import torch
import torch.nn as nn

from ..functional.kinds import KINDS
from ..model.architectures import Architecture, resolve_architecture
from ..model.select import match_names
from ..modules import SUPPORTED_LAYERS

__all__ = ["CircuitGraph", "circuit_graph", "EMBEDDINGS", "FINE_UNITS", "FineUnit"]

#: How the embeddings become writers: one node (their sum) or one per embedding module.
EMBEDDINGS = ("joint", "split")
_SPLIT_NAMES = ("Tok Embed", "Pos Embed")


class FineUnit(NamedTuple):
    """One row of :data:`FINE_UNITS`: units inside a kind of writer. Axes: ``h`` heads, ``d`` a
    head's value dimensions, ``n`` an MLP's neurons, ``b`` examples, ``t`` positions."""

    writers: str  # which writers it splits: "heads" or "mlp"
    suffix: str  # a unit's name is its writer's name, ".", the suffix and its index
    mask: str  # einops: one layer's flat unit mask -> a shape that broadcasts over the activation
    layout: str  # einops: the activation where the forward gates it -> (b, t, units in unit order)


#: The finer units a graph may split writers into (``circuit_graph(model, units=...)``).
FINE_UNITS: dict[str, FineUnit] = {
    "value": FineUnit("heads", "v", "(h d) -> h 1 d", "b h t d -> b t (h d)"),
    "neuron": FineUnit("mlp", "n", "n -> n", "b t n -> b t n"),
}


@dataclass(frozen=True)
class CircuitGraph:
    """Writers, readers and edges of one model (see the module docstring for names and order).

    Attributes:
        architecture: the architecture row.
        layers, heads, kv_heads: L, H and G (G divides H).
        embeddings: the embedding writers' names (e = their count).
        parallel: per layer, whether its MLP reads the stream before its heads.
        units: the :data:`FINE_UNITS` rows splitting writers into finer units.
        head_dim, mlp_width: d (a head's value dimensions) and the MLP's neurons, as the units
            need them (0 where no unit reads them).
    """

    architecture: Architecture
    layers: int
    heads: int
    kv_heads: int
    embeddings: tuple[str, ...]
    parallel: tuple[bool, ...]
    units: tuple[str, ...] = ()
    head_dim: int = 0
    mlp_width: int = 0

    def __post_init__(self):
        # What the forward reads, filled now: functools.cached_property takes a lock on first use
        # (Python < 3.12), which torch.compile cannot trace inside a user's compiled step.
        for name in ("writers", "in_degrees", "segments", "unit_sizes", "first_units"):
            getattr(self, name)

    @property
    def edges_allowed(self) -> bool:
        """Edge masks need a pre-norm model; post-norm blocks allow node masks only."""
        return not self.architecture.post_norm

    # -- writers -------------------------------------------------------------------------------
    @cached_property
    def writers(self) -> tuple[str, ...]:
        names = list(self.embeddings)
        for layer in range(self.layers):
            names += [f"A{layer}.{h}" for h in range(self.heads)] + [f"MLP {layer}"]
        return tuple(names)

    def first_writer(self, layer: int) -> int:
        """Index of layer ``layer``'s first head among the writers."""
        return len(self.embeddings) + layer * (self.heads + 1)

    def attention_reads(self, layer: int) -> int:
        """How many writers a head's query, key or value input in ``layer`` reads."""
        return self.first_writer(layer)

    def mlp_reads(self, layer: int) -> int:
        """How many writers ``layer``'s MLP reads."""
        return self.first_writer(layer) + (0 if self.parallel[layer] else self.heads)

    # -- readers -------------------------------------------------------------------------------
    @property
    def attention_readers(self) -> int:
        """Readers of one layer's attention: H queries, G keys, G values."""
        return self.heads + 2 * self.kv_heads

    @cached_property
    def readers(self) -> tuple[str, ...]:
        names = []
        for layer in range(self.layers):
            names += [f"A{layer}.{h}.Q" for h in range(self.heads)]
            names += [f"A{layer}.{g}.K" for g in range(self.kv_heads)]
            names += [f"A{layer}.{g}.V" for g in range(self.kv_heads)]
            names.append(f"MLP {layer}")
        return tuple(names) + ("Resid End",)

    @cached_property
    def in_degrees(self) -> tuple[int, ...]:
        """How many writers each reader reads, in reader order."""
        sizes = []
        for layer in range(self.layers):
            sizes += [self.attention_reads(layer)] * self.attention_readers + [self.mlp_reads(layer)]
        return tuple(sizes) + (len(self.writers),)

    # -- edges ---------------------------------------------------------------------------------
    @property
    def num_edges(self) -> int:
        return sum(self.in_degrees)

    @cached_property
    def segments(self) -> tuple[tuple[int, int], ...]:
        """The flat mask's blocks in order: per layer (attention readers, their reads) and
        (1, the MLP's reads), then (1, all writers) for the logits."""
        out = []
        for layer in range(self.layers):
            out += [(self.attention_readers, self.attention_reads(layer)), (1, self.mlp_reads(layer))]
        return tuple(out) + ((1, len(self.writers)),)

    @cached_property
    def edges(self) -> tuple[str, ...]:
        """Every edge's name ``"{writer}->{reader}"``, in edge order."""
        return tuple(f"{self.writers[w]}->{r}" for r, n in zip(self.readers, self.in_degrees) for w in range(n))

    @cached_property
    def _edge_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.edges)}

    def edge_index(self, name: str) -> int:
        """Position of edge ``name`` in the flat mask; ValueError naming near misses otherwise."""
        try:
            return self._edge_index[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self.edges, n=3)
            raise ValueError(f"no edge {name!r} in this graph ({self.num_edges} edges, e.g. {self.edges[0]!r})"
                             + (f"; did you mean {close}?" if close else "")) from None

    def writer_of_edge(self, device=None) -> torch.Tensor:
        """``(edges,)`` long: each edge's writer index (ties a node mask to its edges)."""
        return torch.cat([torch.arange(n, device=device) for n in self.in_degrees])

    def reader_of_edge(self, device=None) -> torch.Tensor:
        """``(edges,)`` long: each edge's reader index."""
        sizes = torch.tensor(self.in_degrees, device=device)
        return torch.repeat_interleave(torch.arange(len(self.readers), device=device), sizes)

    def edge_mask(self, names, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """The binary ``(edges,)`` mask keeping exactly the edges ``names``."""
        mask = torch.zeros(self.num_edges, dtype=dtype, device=device)
        mask[[self.edge_index(n) for n in names]] = 1
        return mask

    def edge_names(self, mask: torch.Tensor) -> list[str]:
        """The names of the edges a binary ``(edges,)`` mask keeps."""
        if mask.shape != (self.num_edges,):
            raise ValueError(f"mask must have shape ({self.num_edges},), got {tuple(mask.shape)}")
        return [self.edges[i] for i in torch.nonzero(mask).flatten().tolist()]

    # -- units ---------------------------------------------------------------------------------
    def is_split(self, writers: str) -> bool:
        """Whether the graph's units split the ``writers`` kind (``"heads"`` or ``"mlp"``)."""
        return self.unit_row(writers) is not None

    def unit_row(self, writers: str) -> FineUnit | None:
        """The :data:`FINE_UNITS` row splitting the ``writers`` kind, if any."""
        return next((FINE_UNITS[u] for u in self.units if FINE_UNITS[u].writers == writers), None)

    @property
    def unit_axes(self) -> dict[str, int]:
        """The sizes of the :class:`FineUnit` patterns' axes."""
        return {"h": self.heads, "d": self.head_dim, "n": self.mlp_width}

    @cached_property
    def unit_sizes(self) -> tuple[int, ...]:
        """How many units each writer has, in writer order (1 for a writer not split)."""
        head = self.head_dim if self.is_split("heads") else 1
        mlp = self.mlp_width if self.is_split("mlp") else 1
        return (1,) * len(self.embeddings) + ((head,) * self.heads + (mlp,)) * self.layers

    @property
    def num_units(self) -> int:
        return sum(self.unit_sizes)

    @cached_property
    def first_units(self) -> tuple[int, ...]:
        """Each writer's first unit's index, in writer order."""
        return tuple(itertools.accumulate(self.unit_sizes[:-1], initial=0))

    @cached_property
    def unit_names(self) -> tuple[str, ...]:
        """Every unit's name, in unit order: a writer's own name, or ``"{writer}.{suffix}{j}"``."""
        suffix = {FINE_UNITS[u].writers: FINE_UNITS[u].suffix for u in self.units}
        names = list(self.embeddings)
        for layer in range(self.layers):
            for kind, writers in (("heads", [f"A{layer}.{h}" for h in range(self.heads)]), ("mlp", [f"MLP {layer}"])):
                for w in writers:
                    n = self.head_dim if kind == "heads" else self.mlp_width
                    names += [f"{w}.{suffix[kind]}{j}" for j in range(n)] if kind in suffix else [w]
        return tuple(names)

    def writer_of_unit(self, device=None) -> torch.Tensor:
        """``(units,)`` long: each unit's writer (``node_mask[writer_of_unit]`` is a node mask's units)."""
        sizes = torch.tensor(self.unit_sizes, device=device)
        return torch.repeat_interleave(torch.arange(len(self.writers), device=device), sizes)

    def unit_span(self, layer: int, writers: str) -> tuple[int, int]:
        """Where layer ``layer``'s heads (``"heads"``) or MLP (``"mlp"``) sit in the unit mask."""
        first = self.first_writer(layer) + (0 if writers == "heads" else self.heads)
        count = self.heads if writers == "heads" else 1
        start = self.first_units[first]
        return start, start + sum(self.unit_sizes[first:first + count])

    @property
    def num_activations(self) -> int:
        """How many units are split out of a writer: the activations a unit ablation replaces."""
        return self.layers * (self.heads * self.head_dim * self.is_split("heads") + self.mlp_width * self.is_split("mlp"))

    def activation_span(self, layer: int, writers: str) -> tuple[int, int]:
        """Where layer ``layer``'s split heads or MLP sit among the activations ``(..., num_activations)``:
        every split unit, in unit order."""
        heads, mlp = self.heads * self.head_dim * self.is_split("heads"), self.mlp_width * self.is_split("mlp")
        start = layer * (heads + mlp) + (0 if writers == "heads" else heads)
        return start, start + (heads if writers == "heads" else mlp)


def _config_int(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__} has none of {names}; cannot size the circuit graph")


def _in_features(module: nn.Module) -> int:
    # A linear layer's input features, from its weight's axes in the layer-kind table.
    kind = SUPPORTED_LAYERS.get(type(module))
    if kind is None or KINDS[kind].dims != 2:
        raise ValueError(f"{type(module).__name__} is not a linear layer; neuron units need the MLP's output projection")
    return module.weight.shape[KINDS[kind].axes.split().index("i")]


def _head_dim(arch: Architecture, block: nn.Module, heads: int) -> int:
    # The output projection's input features, split into heads by the table's pattern.
    for glob, (pattern, _) in arch.heads.items():
        lhs = pattern.split("->")[0]
        if "o" in re.findall(r"\w+", lhs):
            weight = block.get_submodule(glob[len(arch.layers) + 1:]).weight
            return einops.rearrange(torch.empty(weight.shape, device="meta"), f"{lhs} -> h d o", h=heads).shape[1]
    raise ValueError(f"architecture {arch.name!r} names no attention output projection; value units need one")


def _unit_sizes(model: nn.Module, arch: Architecture, units, heads: int) -> tuple[tuple[str, ...], int, int]:
    if isinstance(units, str):
        units = (units,)
    units = tuple(units)
    unknown = [u for u in units if u not in FINE_UNITS]
    if unknown or len(set(units)) != len(units):
        raise ValueError(f"units must be distinct names from {list(FINE_UNITS)}, got {units!r}")
    if not units:
        return (), 0, 0
    modules = dict(model.named_modules())
    block = modules[match_names(modules, arch.layers)[0]]  # every block alike: the first sizes them
    head_dim = _head_dim(arch, block, heads) if "value" in units else 0
    width = 0
    if "neuron" in units:
        if arch.mlp_down is None or arch.mlp_neurons is None:
            raise ValueError(f"architecture {arch.name!r} names no mlp_down (the MLP's output projection) or no "
                             "mlp_neurons (the MLP up to it); neuron units need both: give the row mlp_down and "
                             "mlp_neurons")
        width = _in_features(block.get_submodule(arch.mlp_down))
    return tuple(u for u in FINE_UNITS if u in units), head_dim, width


def circuit_graph(model: nn.Module, *, embeddings: str = "joint", units=(), architecture=None) -> CircuitGraph:
    """The graph of ``model``'s writers, readers and edges, sized from ``model.config``.

    Args:
        model: a model of an architecture in :data:`neurosurgeon.ARCHITECTURES` whose row
            lists its ``model_type`` among ``circuit_types``.
        embeddings: ``"joint"``: one writer ``Resid Start``, the embeddings' sum; ``"split"``:
            ``Tok Embed`` and, with learned positions, ``Pos Embed``.
        units: names from :data:`FINE_UNITS` (``"value"``, ``"neuron"``, or both) splitting heads
            or MLPs into finer units for unit masks; edges stay between whole writers.
        architecture: force a row (name or :class:`~neurosurgeon.model.architectures.Architecture`).

    Raises:
        ValueError: the architecture or its model type has no circuit forward (naming how to
            add one), ``embeddings`` is neither choice, or ``units`` names no row of
            :data:`FINE_UNITS`.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12))).num_edges
        32491
    """
    if embeddings not in EMBEDDINGS:
        raise ValueError(f"embeddings must be one of {EMBEDDINGS}, got {embeddings!r}")
    arch = resolve_architecture(model, architecture)
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in arch.circuit_types:
        raise ValueError(
            f"no circuit forward for model_type {model_type!r} (architecture {arch.name!r}); the circuit "
            f"forward reproduces {list(arch.circuit_types) or 'no model type'} of that row. To add a family, give "
            "its neurosurgeon.ARCHITECTURES row the circuit fields (embeddings, norms, final_norm, unembed, "
            "rotary, parallel_residual, attention_scale) and list the model_type in circuit_types")
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(f"{type(config).__name__}.layer_types {sorted(set(layer_types))}: the circuit forward "
                         "computes full attention only")
    layers = _config_int(config, "num_hidden_layers", "n_layer")
    heads = _config_int(config, "num_attention_heads", "n_head")
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv_heads:
        raise ValueError(f"num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}")
    parallel = bool(getattr(config, arch.parallel_residual, False)) if arch.parallel_residual else False
    if embeddings == "split" and len(arch.embeddings) > 1:
        names = _SPLIT_NAMES[:len(arch.embeddings)]
    elif embeddings == "split":
        names = _SPLIT_NAMES[:1]
    else:
        names = ("Resid Start",)
    fine, head_dim, width = _unit_sizes(model, arch, units, heads)
    return CircuitGraph(arch, layers, heads, kv_heads, names, (parallel,) * layers, fine, head_dim, width)
