"""One compact forward for every family in the architecture table, reading the user's own model.

Norms, MLPs, embeddings and rotary tables are the model's own modules, called as they are; only
attention is recomputed, per head, because each head's query, key and value read their own
input. The projections' weights are split into heads by the table's einops patterns, so a fused
``[q | k | v]`` (GPT-2), a head-major ``[q_0 k_0 v_0 | ...]`` (GPT-NeoX) and separate grouped
projections (Llama) are one code path.

The attention output projection's bias belongs to no head: it is a constant of the residual
stream, seen by every later reader whatever the masks. Dropout is not applied.

A unit mask gates finer units inside their writers (the graph's ``units``): a head's value
dimensions in the recomputed attention, an MLP's neurons between the row's ``mlp_neurons`` (the
MLP's own modules up to its output projection) and the output projection ``mlp_down``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import einops
import torch
import torch.nn as nn

from ..functional._checks import in_transform
from ..functional.edges import gated, reader_inputs
from ..model.select import match_names
from .graph import CircuitGraph
from .stack import WritersStack

__all__ = ["circuit_forward", "CircuitOutput", "UnitAblation"]


class UnitAblation(NamedTuple):
    """Ablated values of a graph with units: ``writers`` ``(W, B or 1, T or 1, D)`` (or None: zero)
    for whole writers, ``activations`` ``(B or 1, T or 1, graph.num_activations)`` (or None: zero)
    for the units split out of heads and MLPs (a value dimension's or a neuron's activation)."""

    writers: torch.Tensor | None
    activations: torch.Tensor | None


@dataclass
class CircuitOutput:
    """What :func:`circuit_forward` returns.

    Attributes:
        output: the logits ``(B, T, vocab)``, or the final hidden state for a model without
            an unembedding (after the final norm, as the model's ``last_hidden_state``).
        writers: with ``return_writers=True``, every writer's output ``(W, B, T, D)`` in the
            graph's writer order; None otherwise.
        activations: with ``return_writers=True`` on a graph with units, the split units'
            activations ``(B, T, graph.num_activations)`` in unit order; None otherwise.
    """

    output: torch.Tensor
    writers: torch.Tensor | None = None
    activations: torch.Tensor | None = None


def _find(model: nn.Module, name: str | None, *, required: bool = True) -> nn.Module | None:
    # A table name ends a module path ("ln_f" finds "transformer.ln_f"): base models and task heads alike.
    if name is None:
        return None
    hits = [m for n, m in model.named_modules() if n == name or n.endswith("." + name)]
    if not hits and not required:
        return None
    if len(hits) != 1:
        raise ValueError(f"{type(model).__name__} has {len(hits)} modules named {name!r}; the architecture row "
                         "needs exactly one")
    return hits[0]


def _strip_axis(lhs: str, axis: str) -> str:
    return re.sub(rf"(?<![\w]){axis}(?![\w])", "", lhs).strip()


@dataclass
class _Attention:
    """One layer's attention weights split into heads: W ``(heads, d, D)``, b ``(heads, d)``."""

    wq: torch.Tensor
    bq: torch.Tensor | None
    wk: torch.Tensor
    bk: torch.Tensor | None
    wv: torch.Tensor
    bv: torch.Tensor | None
    wo: torch.Tensor  # (H, d, D)
    bo: torch.Tensor | None  # (D,)


def _attention_weights(graph: CircuitGraph, block: nn.Module) -> _Attention:
    arch = graph.architecture
    qkv: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    out = None
    for glob, (pattern, _) in arch.heads.items():
        module = block.get_submodule(glob[len(arch.layers) + 1:])
        lhs = pattern.split("->")[0]
        bias = getattr(module, "bias", None)
        if "qkv" in lhs.split() or "qkv" in re.findall(r"\w+", lhs):
            w = einops.rearrange(module.weight, f"{lhs} -> qkv h d i", qkv=3, h=graph.heads)
            b = None if bias is None else einops.rearrange(bias, f"{_strip_axis(lhs, 'i')} -> qkv h d", qkv=3, h=graph.heads)
            qkv += [(w[j], None if b is None else b[j]) for j in range(3)]
        elif "o" in re.findall(r"\w+", lhs):
            out = (einops.rearrange(module.weight, f"{lhs} -> h d o", h=graph.heads), bias)
        else:
            h = graph.heads if not qkv else graph.kv_heads
            w = einops.rearrange(module.weight, f"{lhs} -> h d i", h=h)
            qkv.append((w, None if bias is None else einops.rearrange(bias, f"{_strip_axis(lhs, 'i')} -> h d", h=h)))
    (wq, bq), (wk, bk), (wv, bv) = qkv
    return _Attention(wq, bq, wk, bk, wv, bv, *out)


def _project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    # x: one input shared by every head (B, T, D), or one per head (heads, B, T, D) -> (B, heads, T, d).
    y = torch.einsum("bti,hdi->bhtd" if x.dim() == 3 else "hbti,hdi->bhtd", x, w)
    return y if b is None else y + b[None, :, None, :]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotary embedding (Su et al. 2021, RoFormer, Eq. 34) on the first cos.shape[-1] features.
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = torch.cat((-rot[..., r // 2:], rot[..., : r // 2]), dim=-1)
    return torch.cat((rot * cos[:, None] + half * sin[:, None], rest), dim=-1)


class _Model:
    """The modules of one model the forward needs, found once per call through the table."""

    def __init__(self, model: nn.Module, graph: CircuitGraph):
        arch = graph.architecture
        self.graph, self.arch, self.config = graph, arch, model.config
        names = dict(model.named_modules())
        self.blocks = [names[n] for n in match_names(names, arch.layers)]
        if len(self.blocks) != graph.layers:
            raise ValueError(f"the graph has {graph.layers} layers but {type(model).__name__} has {len(self.blocks)} "
                             f"blocks matching {arch.layers!r}")
        self.embeddings = [_find(model, n) for n in arch.embeddings]
        self.final_norm = _find(model, arch.final_norm)
        self.rotary = _find(model, arch.rotary)
        self.unembed = _find(model, arch.unembed, required=False)  # a base model has none

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The embedding writers' outputs ``(e, B, T, D)``."""
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        outs = [m(input_ids if i == 0 else positions) for i, m in enumerate(self.embeddings)]
        if len(self.graph.embeddings) == 1:
            total = outs[0]
            for o in outs[1:]:
                total = total + o
            return total[None]
        return torch.stack(outs)

    def norm(self, layer: int, which: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[layer].get_submodule(self.arch.norms[which])(x)

    def heads(self, layer: int, xq, xk, xv, rotary, key_padding, values: Callable | None = None):
        """Each head's write ``(H, B, T, D)`` and the output bias, from its query, key and value inputs
        (each ``(B, T, D)`` shared, or ``(heads, B, T, D)``); ``values`` maps the heads' attention
        outputs ``(B, H, T, d)`` (unit gates) before the output projection."""
        graph, block = self.graph, self.blocks[layer]
        w = _attention_weights(graph, block)
        if not self.arch.post_norm:
            xq, xk, xv = (self.norm(layer, 0, x) for x in (xq, xk, xv))
        q, k, v = _project(xq, w.wq, w.bq), _project(xk, w.wk, w.bk), _project(xv, w.wv, w.bv)
        if rotary is not None:
            q, k = _rotate(q, *rotary), _rotate(k, *rotary)
        if graph.kv_heads != graph.heads:
            k = k.repeat_interleave(graph.heads // graph.kv_heads, dim=1)
            v = v.repeat_interleave(graph.heads // graph.kv_heads, dim=1)
        d = q.shape[-1]
        scale = self.arch.attention_scale(self.config, layer, d) if self.arch.attention_scale else d ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        t = q.shape[-2]
        barred = None
        if self.arch.causal:
            barred = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        if key_padding is not None:
            pad = ~key_padding.bool()[:, None, None, :]
            barred = pad if barred is None else barred | pad
        if barred is not None:
            scores = scores.masked_fill(barred, torch.finfo(scores.dtype).min)
        z = torch.matmul(scores.softmax(-1), v)
        if values is not None:
            z = values(z)
        return torch.einsum("bhtd,hdo->hbto", z, w.wo), w.bo

    def mlp(self, layer: int, x: torch.Tensor, neurons: Callable | None = None) -> torch.Tensor:
        """What the MLP writes; ``neurons`` maps the input of its output projection (unit gates)."""
        block = self.blocks[layer]
        if not self.arch.post_norm:
            x = self.norm(layer, 1, x)
        mlp = block.get_submodule(self.arch.mlp)
        if neurons is not None:
            return block.get_submodule(self.arch.mlp_down)(neurons(self.arch.mlp_neurons(mlp, x)))
        out = mlp(x)
        if self.arch.mlp_update != self.arch.mlp:
            out = block.get_submodule(self.arch.mlp_update)(out)
        return out

    def rotary_tables(self, x: torch.Tensor):
        if self.rotary is None:
            return None
        b, t = x.shape[:2]
        return self.rotary(x, torch.arange(t, device=x.device).expand(b, t))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x if self.unembed is None else self.unembed(x)


def _axes(graph: CircuitGraph, pattern: str) -> dict[str, int]:
    named = set(re.findall(r"\w+", pattern))
    return {k: v for k, v in graph.unit_axes.items() if k in named}


class _Units:
    """Each split unit's activation z becomes ``gated(z, a, m)``, the node formula at the units'
    granularity (a unit mask m, ablated activations a); z is recorded when ``record`` is a list."""

    def __init__(self, graph: CircuitGraph, mask, ablated, record: list | None):
        self.graph, self.mask, self.ablated, self.record = graph, mask, ablated, record

    def gate(self, layer: int, writers: str) -> Callable | None:
        """The map of layer ``layer``'s heads' or MLP's activations; None where nothing is done."""
        graph, row = self.graph, self.graph.unit_row(writers)
        if row is None or (self.mask is None and self.record is None):
            return None
        lhs, rhs = (side.strip() for side in row.layout.split("->"))
        mask = None if self.mask is None else einops.rearrange(
            self.mask[slice(*graph.unit_span(layer, writers))], row.mask, **_axes(graph, row.mask))
        a = None if self.ablated is None else einops.rearrange(
            self.ablated[..., slice(*graph.activation_span(layer, writers))], f"{rhs} -> {lhs}", **_axes(graph, lhs))

        def gate(z):
            if self.record is not None:
                self.record.append(einops.rearrange(z, row.layout))
            return z if mask is None else gated(z, a, mask)

        return gate


def _check_inputs(graph: CircuitGraph, input_ids, mask, node_mask, unit_mask, ablated, activations):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be an integer tensor (batch, positions), got "
                         f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
    if sum(m is not None for m in (mask, node_mask, unit_mask)) > 1:
        raise ValueError("give one of mask= (edges), node_mask= (writers) or unit_mask= (units)")
    if mask is not None:
        if not graph.edges_allowed:
            raise ValueError(f"edge masks need a pre-norm model; {graph.architecture.name!r} re-normalises the residual "
                             "stream after every sublayer, so a writer's contribution to a later reader is not additive. "
                             "Use node_mask= (one value per writer) instead")
        if mask.shape[-1:] != (graph.num_edges,) or mask.dim() != 1:
            raise ValueError(f"mask must have shape ({graph.num_edges},) (one entry per edge), got {tuple(mask.shape)}")
    if node_mask is not None and (node_mask.dim() != 1 or node_mask.shape[0] != len(graph.writers)):
        raise ValueError(f"node_mask must have shape ({len(graph.writers)},) (one entry per writer), got "
                         f"{tuple(node_mask.shape)}")
    if unit_mask is not None and (unit_mask.dim() != 1 or unit_mask.shape[0] != graph.num_units):
        raise ValueError(f"unit_mask must have shape ({graph.num_units},) (one entry per unit of the graph's units "
                         f"{list(graph.units)}), got {tuple(unit_mask.shape)}")
    if ablated is not None and (ablated.dim() != 4 or ablated.shape[0] != len(graph.writers)):
        raise ValueError(f"ablated must have shape ({len(graph.writers)}, batch or 1, positions or 1, width), got "
                         f"{tuple(ablated.shape)}")
    if activations is not None and (activations.dim() != 3 or activations.shape[-1] != graph.num_activations):
        raise ValueError(f"ablated.activations must have shape (batch or 1, positions or 1, {graph.num_activations}), "
                         f"got {tuple(activations.shape)}")


def circuit_forward(model: nn.Module, graph: CircuitGraph, input_ids: torch.Tensor, *, mask: torch.Tensor | None = None,
                    node_mask: torch.Tensor | None = None, unit_mask: torch.Tensor | None = None,
                    ablated: torch.Tensor | UnitAblation | None = None, attention_mask: torch.Tensor | None = None,
                    return_writers: bool = False) -> CircuitOutput:
    """``model``'s forward with every edge (or node) of ``graph`` gated between its output and its
    ablated value: reader r reads ``sum_w m[r, w] h_w + (1 - m[r, w]) a_w``.

    Args:
        model: the model ``graph`` was built from, in eval mode for exactness (no dropout is applied).
        graph: from :func:`~neurosurgeon.circuits.circuit_graph`.
        input_ids: ``(B, T)`` token ids.
        mask: ``(edges,)`` edge mask m in the graph's edge order (soft or binary; pre-norm only).
        node_mask: ``(writers,)``: writer w's every outgoing edge gated by ``node_mask[w]``.
        unit_mask: ``(graph.num_units,)``: a node mask over the graph's units, a split unit u's
            activation z_u replaced by ``a_u + m_u (z_u - a_u)``.
        ablated: a_w, ``(writers, B or 1, T or 1, D)``; None: zero ablation. On a graph with
            units, a :class:`UnitAblation` (what :func:`~neurosurgeon.circuits.ablation_values`
            gives it), whose activations a unit mask reads.
        attention_mask: ``(B, T)``, 0 at padded positions (keys there are ignored).
        return_writers: also return every writer's output, and on a graph with units the split
            units' activations (what mean and resample ablations read).

    With no mask, this is the model's own forward.

    Returns:
        :class:`CircuitOutput`.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=50)).eval()
        >>> graph = circuit_graph(model)
        >>> ids = torch.randint(50, (2, 5))
        >>> out = circuit_forward(model, graph, ids, mask=torch.ones(graph.num_edges)).output
        >>> torch.allclose(out, model(ids).logits, atol=1e-5)
        True
    """
    activations = None
    if isinstance(ablated, UnitAblation):
        ablated, activations = ablated
    elif unit_mask is not None and ablated is not None and graph.num_activations:
        raise ValueError("a unit mask needs ablated values for the split units too: give ablated=UnitAblation(writers, "
                         "activations), as ablation_values gives for a graph with units")
    _check_inputs(graph, input_ids, mask, node_mask, unit_mask, ablated, activations)
    parts = _Model(model, graph)
    emb = parts.embed(input_ids)
    rotary = parts.rotary_tables(emb[0])
    written = [] if return_writers else None
    recorded = [] if return_writers and graph.num_activations else None
    units = _Units(graph, None if unit_mask is None else unit_mask.to(emb.dtype), activations, recorded)
    if mask is not None:
        out = _edge_forward(parts, graph, emb, mask.to(emb.dtype), ablated, rotary, attention_mask, written, units)
    else:
        gate = node_mask
        if unit_mask is not None:  # a writer not split is one unit: its gate is its unit's
            gate = unit_mask[torch.tensor(graph.first_units, device=unit_mask.device)]
        gate = None if gate is None else gate.to(emb.dtype)
        out = _node_forward(parts, graph, emb, gate, ablated, rotary, attention_mask, written, units)
    return CircuitOutput(parts.finish(out), None if written is None else torch.cat(written),
                         None if recorded is None else torch.cat(recorded, -1))


def _ablated(ablated, start: int, stop: int):
    return None if ablated is None else ablated[start:stop]


def _edge_forward(parts: _Model, graph: CircuitGraph, emb, mask, ablated, rotary, padding, written, units):
    blocks = torch.split(mask, [r * n for r, n in graph.segments])
    blocks = [b.view(r, n) for b, (r, n) in zip(blocks, graph.segments)]
    base = torch.zeros((), dtype=emb.dtype, device=emb.device)  # sum of ablated values and constants so far
    # From the first heads' write on (every input reaches it: batched under vmap if any is), every
    # writer's difference goes into one stack, so each reader group is one GEMM over a prefix of it;
    # without autograd every attention group's inputs also go into the first one's, so no later
    # group maps a fresh readers-sized tensor (first touched page by page). A transform or compile
    # that records keeps each chunk its own tensor (reader_inputs adds them up group by group).
    stacking = not (torch.is_grad_enabled() and in_transform())
    stack: WritersStack | None = None
    chunks: list = []  # what a group reads: the writers' differences, or (with a stack) their anchors
    readers = None
    H, G = graph.heads, graph.kv_heads

    def write(h, start):
        nonlocal base, stack
        if written is not None:
            written.append(h)
        a = _ablated(ablated, start, start + h.shape[0])
        d = h if a is None else h - a
        if a is not None:
            base = base + a.sum(0)
        if stack is None and (not stacking or start == 0):
            chunks.append(d)
            return
        if stack is None:
            stack = WritersStack(d.new_empty((len(graph.writers), *d.shape[1:])))
            chunks[:] = [stack.write(chunks[0], 0)]
        chunks.append(stack.write(d, start))

    def so_far():  # what a group reads now, and from where
        return stack, list(chunks)

    def read(block, source, base, out=None):
        where, read_chunks = source
        if where is None:
            return reader_inputs(block, read_chunks, base, out=out)
        return where.read(block, base, read_chunks, out=out)

    write(emb, 0)
    for layer in range(graph.layers):
        x = read(blocks[2 * layer], so_far(), base, out=readers)
        readers = None if torch.is_grad_enabled() else x
        before = (so_far(), base)
        # split, not slices: each slice's backward would fill a zero tensor of all the readers'
        # inputs and autograd would add the three; split's joins the three gradients once.
        heads, bias = parts.heads(layer, *x.split([H, G, G]), rotary, padding, units.gate(layer, "heads"))
        first = graph.first_writer(layer)
        write(heads, first)
        if bias is not None:
            base = base + bias
        if graph.parallel[layer]:
            x = read(blocks[2 * layer + 1], *before)
        else:
            x = read(blocks[2 * layer + 1], so_far(), base)
        # a view's backward: no zero-filled copy
        write(parts.mlp(layer, x.squeeze(0), units.gate(layer, "mlp"))[None], first + H)
    return read(blocks[-1], so_far(), base).squeeze(0)


def _node_forward(parts: _Model, graph: CircuitGraph, emb, gate, ablated, rotary, padding, written, units):
    # Every reader reads one stream: the gated writes, sum_w a_w + g_w (h_w - a_w), so a node
    # mask costs what the model costs; it equals the tied edge mask (tested). Under a unit mask a
    # split writer is gated inside (its units), and written whole.
    post = parts.arch.post_norm

    def write(h, start, kind=None):
        if written is not None:
            written.append(h)
        if gate is None or (units.mask is not None and kind is not None and graph.is_split(kind)):
            return h.sum(0)
        g = gate[start:start + h.shape[0]].view(-1, *([1] * (h.dim() - 1)))
        return gated(h, _ablated(ablated, start, start + h.shape[0]), g).sum(0)

    def mlp(layer, x):
        return write(parts.mlp(layer, x, units.gate(layer, "mlp"))[None], graph.first_writer(layer) + graph.heads, "mlp")

    stream = write(emb, 0)
    for layer in range(graph.layers):
        heads, bias = parts.heads(layer, stream, stream, stream, rotary, padding, units.gate(layer, "heads"))
        attn = write(heads, graph.first_writer(layer), "heads")
        if bias is not None:
            attn = attn + bias
        if post:
            after = parts.norm(layer, 0, stream + attn)
            stream = parts.norm(layer, 1, after + mlp(layer, after))
        elif graph.parallel[layer]:
            stream = stream + attn + mlp(layer, stream)
        else:
            stream = stream + attn
            stream = stream + mlp(layer, stream)
    return stream
