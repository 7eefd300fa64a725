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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn

from ..model.architectures import Architecture, resolve_architecture

__all__ = ["CircuitGraph", "circuit_graph", "EMBEDDINGS"]

#: How the embeddings become writers: one node (their sum) or one per embedding module.
EMBEDDINGS = ("joint", "split")
_SPLIT_NAMES = ("Tok Embed", "Pos Embed")


@dataclass(frozen=True)
class CircuitGraph:
    """Writers, readers and edges of one model (see the module docstring for names and order).

    Attributes:
        architecture: the architecture row.
        layers, heads, kv_heads: L, H and G (G divides H).
        embeddings: the embedding writers' names (e = their count).
        parallel: per layer, whether its MLP reads the stream before its heads.
    """

    architecture: Architecture
    layers: int
    heads: int
    kv_heads: int
    embeddings: tuple[str, ...]
    parallel: tuple[bool, ...]

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


def _config_int(config, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__} has none of {names}; cannot size the circuit graph")


def circuit_graph(model: nn.Module, *, embeddings: str = "joint", architecture=None) -> CircuitGraph:
    """The graph of ``model``'s writers, readers and edges, sized from ``model.config``.

    Args:
        model: a model of an architecture in :data:`neurosurgeon.ARCHITECTURES` whose row
            lists its ``model_type`` among ``circuit_types``.
        embeddings: ``"joint"``: one writer ``Resid Start``, the embeddings' sum; ``"split"``:
            ``Tok Embed`` and, with learned positions, ``Pos Embed``.
        architecture: force a row (name or :class:`~neurosurgeon.model.architectures.Architecture`).

    Raises:
        ValueError: the architecture or its model type has no circuit forward (naming how to
            add one), or ``embeddings`` is neither choice.

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
    return CircuitGraph(arch, layers, heads, kv_heads, names, (parallel,) * layers)
