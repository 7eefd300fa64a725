"""Reading and writing circuits: our own JSON, the EAP-IG / MIB circuit-graph JSON, and auto-circuit's
edge names.

Every reader takes the :class:`~neurosurgeon.circuits.graph.CircuitGraph` the circuit belongs to and
returns the ``(edges,)`` mask (float 0/1, in the graph's edge order) and, where the file has them,
the ``(edges,)`` float32 scores; every writer takes a binary mask and/or scores in that order.

**Our JSON** (:func:`to_circuit_json` / :func:`from_circuit_json`)::

    {"format": "neurosurgeon-circuit", "version": 1, "architecture": "gpt2",
     "config": {"layers": 2, "heads": 4, "kv_heads": 4, "embeddings": ["Resid Start"],
                "parallel": [false, false]},
     "edges": {"Resid Start->A0.0.Q": {"in_circuit": true, "score": 0.25}, ...}}

Every edge is written, in edge order; ``score`` only when scores are given. Reading checks the
architecture and every size against the graph and every edge name; an edge missing from the file is
out of the circuit, with a NaN score.

**EAP-IG / MIB JSON** (:func:`to_eap_ig` / :func:`from_eap_ig`): the file written by
``Graph.to_json`` and read by ``Graph.from_json`` in hannamw/EAP-IG (``src/eap/graph.py``), which
the MIB circuit-localization track (yanivnik/MIB-shared-task, ``MIB_circuit_track/circuit_loading.py``)
reads unchanged::

    {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 32},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "m0": {...}, ...,
               "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": -0.03, "in_graph": false}, ...}}

Their nodes are ``input``, ``a{l}.h{h}``, ``m{l}`` and ``logits``; an edge is
``"{parent}->{child}"``, with ``<q>``, ``<k>`` or ``<v>`` appended when the child is a head. Nodes
come in forward order (``input``, then per layer its heads and its MLP, then ``logits``); edges in
the order their graph adds them: per layer, each earlier writer's edges to every head's q, k, v
(and, in a parallel block, to the MLP), then each writer's edge to the MLP, and last every writer's
edge to the logits. Their edge count equals ours, but their order is writer-major within a layer.

The name mapping:

- ``a{l}.h{h}`` is ``A{l}.{h}``, ``m{l}`` is ``MLP {l}``, ``logits`` is ``Resid End``,
  ``<q>``/``<k>``/``<v>`` are the readers ``.Q``/``.K``/``.V``.
- ``input`` is our first embedding writer: ``Resid Start`` in a joint graph, ``Tok Embed`` in a
  split one. Their input node is TransformerLens's ``hook_embed``, the token embedding alone, and
  they never ablate the positional embedding; so reading into a split graph keeps every
  ``Pos Embed`` edge (score 0), and writing a split graph refuses a mask that drops one. (In a
  joint graph ``Resid Start`` also carries the positions; under patching with clean and corrupted
  prompts of the same positions the two agree.)
- Grouped-query attention: EAP-IG works on the ungrouped model (their README: set
  ``ungroup_grouped_query_attention``), so its file has one k and one v input per query head, and
  ``cfg["n_heads"]`` is H. Writing copies our group edge ``X->A{l}.{g}.K`` to every head of group
  g (heads ``g*H/G`` to ``(g+1)*H/G - 1``, the order ``repeat_interleave`` gives) with the score
  split equally (so a write-read trip returns the score, bit for bit when H/G is a power of two);
  reading sums the copies' scores (the first-order effect of corrupting a shared input is the sum
  over the heads reading it) and merges their ``in_graph`` by ``kv_merge``: ``"strict"`` (the
  default) raises when the heads of a group disagree, ``"any"`` keeps the group edge when any head
  keeps it, ``"all"`` when every head does.

A node is written ``in_graph`` when it has a kept outgoing edge and (being ``input``, or) a kept
incoming edge, the rule their ``apply_topn`` and ``prune`` leave behind; ``logits`` is always in.
Node entries are ignored on reading (their own ``evaluate_graph`` re-derives nodes from the edges),
except that a neuron-level file with a partly kept node is refused.

**auto-circuit** (:func:`to_auto_circuit` / :func:`from_auto_circuit`): UFO-101/auto-circuit names an
edge ``Edge.name == f"{src.name}->{dest.name}"`` (``auto_circuit/types.py``) over the nodes of
``auto_circuit/model_utils/transformer_lens_utils.py``: ``Resid Start``, ``A{l}.{h}``, ``MLP {l}``,
``A{l}.{h}.{Q,K,V}`` (``separate_qkv=True``) or ``A{l}.{h}`` (``separate_qkv=False``) and ``Resid
End``; these are our names. ``Resid Start`` there is ``blocks.0.hook_resid_pre``, every embedding
together, so in a split graph it stands for the ``Tok Embed`` and ``Pos Embed`` edges jointly. With
grouped-query attention auto-circuit runs the ungrouped model, whose key/value inputs are per query
head, mapped as for EAP-IG.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import torch

from .graph import CircuitGraph

__all__ = [
    "CIRCUIT_FORMAT", "KV_MERGES", "to_circuit_json", "from_circuit_json", "to_eap_ig", "from_eap_ig",
    "to_auto_circuit", "from_auto_circuit",
]

#: The ``format`` tag of our circuit JSON, and its version.
CIRCUIT_FORMAT = ("neurosurgeon-circuit", 1)
#: How per-head key/value edges merge into one grouped-query edge on reading.
KV_MERGES = ("strict", "any", "all")


# -- shared checks -----------------------------------------------------------------------------

def _binary_mask(graph: CircuitGraph, mask) -> torch.Tensor:
    """``mask`` as a CPU bool ``(edges,)`` tensor; ValueError unless it is binary and sized to ``graph``."""
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.shape != (graph.num_edges,):
        raise ValueError(f"mask must have shape ({graph.num_edges},) for this graph, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be binary (0/1 or bool): a circuit keeps an edge or not; threshold a soft "
                             "mask first (e.g. CircuitMask.hard() or top_k)")
        mask = mask != 0
    return mask


def _float_scores(graph: CircuitGraph, scores) -> torch.Tensor:
    scores = torch.as_tensor(scores).detach().cpu()
    if scores.shape != (graph.num_edges,):
        raise ValueError(f"scores must have shape ({graph.num_edges},) for this graph, got {tuple(scores.shape)}")
    # float32: both formats hold what a float32 score tensor holds, so a write-read trip is exact.
    return scores.to(torch.float32)


def _load(source) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    raise TypeError(f"expected a dict or a path to a JSON file, got {type(source).__name__}")


def _dump(data: dict, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        # json.dump's default separators: EAP-IG writes its files this way, so ours match byte for byte.
        json.dump(data, f)


def _check_kv_merge(kv_merge: str) -> None:
    if kv_merge not in KV_MERGES:
        raise ValueError(f"kv_merge must be one of {KV_MERGES}, got {kv_merge!r}")


# -- our JSON ----------------------------------------------------------------------------------

def _our_config(graph: CircuitGraph) -> dict:
    return {"layers": graph.layers, "heads": graph.heads, "kv_heads": graph.kv_heads,
            "embeddings": list(graph.embeddings), "parallel": list(graph.parallel)}


def to_circuit_json(graph: CircuitGraph, mask, scores=None, *, path=None) -> dict:
    """A circuit as our JSON dict (see the module docstring), written to ``path`` when given.

    Args:
        graph: the circuit's graph.
        mask: binary ``(edges,)`` (float 0/1 or bool), in the graph's edge order.
        scores: optional ``(edges,)`` scores, stored as float32.
        path: a file to write the JSON to.

    Returns:
        The dict: ``format``, ``version``, ``architecture``, ``config`` (layers, heads, kv_heads,
        embeddings, parallel) and per edge name ``in_circuit`` and, with scores, ``score``.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> graph = circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32)))
        >>> data = to_circuit_json(graph, graph.edge_mask(["Resid Start->Resid End"]))
        >>> data["config"]["layers"], data["edges"]["Resid Start->Resid End"]
        (2, {'in_circuit': True})
    """
    kept = _binary_mask(graph, mask).tolist()
    values = None if scores is None else _float_scores(graph, scores).tolist()
    edges = {}
    for i, name in enumerate(graph.edges):
        entry: dict[str, Any] = {"in_circuit": kept[i]}
        if values is not None:
            entry["score"] = values[i]
        edges[name] = entry
    data = {"format": CIRCUIT_FORMAT[0], "version": CIRCUIT_FORMAT[1], "architecture": graph.architecture.name,
            "config": _our_config(graph), "edges": edges}
    if path is not None:
        _dump(data, path)
    return data


def from_circuit_json(graph: CircuitGraph, source) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read our circuit JSON (a dict or a path) against ``graph``.

    Returns:
        ``(mask, scores)``: the float 0/1 ``(edges,)`` mask, and float32 ``(edges,)`` scores (NaN
        for an edge without one) or None when no edge has a score.

    Raises:
        ValueError: not our format or another version, another architecture, a size that differs
            from the graph's (naming it), an unknown edge name (with near misses), or an edge
            without a bool ``in_circuit``.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> graph = circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32)))
        >>> mask, scores = from_circuit_json(graph, to_circuit_json(graph, graph.edge_mask(["A1.3->Resid End"])))
        >>> graph.edge_names(mask), scores
        (['A1.3->Resid End'], None)
    """
    data = _load(source)
    tag = (data.get("format"), data.get("version"))
    if tag != CIRCUIT_FORMAT:
        raise ValueError(f"not a {CIRCUIT_FORMAT[0]} version {CIRCUIT_FORMAT[1]} file (format/version {tag})")
    if data.get("architecture") != graph.architecture.name:
        raise ValueError(f"circuit is for architecture {data.get('architecture')!r}, the graph is "
                         f"{graph.architecture.name!r}")
    config, expected = data.get("config") or {}, _our_config(graph)
    for key, value in expected.items():
        if config.get(key) != value:
            raise ValueError(f"circuit config {key}={config.get(key)!r} does not match the graph's {value!r}")
    mask = torch.zeros(graph.num_edges)
    scores = torch.full((graph.num_edges,), float("nan"))
    any_score = False
    for name, entry in data.get("edges", {}).items():
        i = graph.edge_index(name)
        kept = entry.get("in_circuit") if isinstance(entry, Mapping) else None
        if not isinstance(kept, bool):
            raise ValueError(f"edge {name!r}: 'in_circuit' must be true or false, got {kept!r}")
        mask[i] = float(kept)
        if "score" in entry:
            scores[i], any_score = entry["score"], True
    return mask, (scores if any_score else None)


# -- EAP-IG / MIB JSON -------------------------------------------------------------------------

@dataclass(frozen=True)
class _EapEdge:
    name: str        # their edge name
    parent: str      # their parent node
    child: str       # their child node (a head without its <q>/<k>/<v>)
    index: int       # our edge index
    copies: int      # how many of their edges map onto ours (H/G for a grouped key/value edge)


@dataclass(frozen=True)
class _EapLayout:
    nodes: tuple[str, ...]          # their nodes, in their order
    edges: tuple[_EapEdge, ...]     # their edges, in their order
    by_name: dict[str, _EapEdge]
    unmapped: tuple[int, ...]       # our edges without a counterpart (from embedding writers after the first)


@lru_cache(maxsize=16)
def _eap_layout(graph: CircuitGraph) -> _EapLayout:
    """Their node and edge names for ``graph``, in the order their ``Graph.from_model`` adds them."""
    H, per = graph.heads, graph.heads // graph.kv_heads
    index = graph.edge_index
    nodes, edges = ["input"], []
    resid = [("input", graph.embeddings[0])]  # (their writer, our writer), in forward order

    def add(theirs: tuple[str, str], ours_writer: str, child: str, reader: str, qkv: str = "", copies: int = 1):
        name = f"{theirs[0]}->{child}" + (f"<{qkv}>" if qkv else "")
        edges.append(_EapEdge(name, theirs[0], child, index(f"{ours_writer}->{reader}"), copies))

    for layer in range(graph.layers):
        heads = [(f"a{layer}.h{h}", f"A{layer}.{h}") for h in range(H)]
        mlp = (f"m{layer}", f"MLP {layer}")
        nodes += [t for t, _ in heads] + [mlp[0]]
        for writer in resid:
            for h in range(H):
                add(writer, writer[1], f"a{layer}.h{h}", f"A{layer}.{h}.Q", "q")
                add(writer, writer[1], f"a{layer}.h{h}", f"A{layer}.{h // per}.K", "k", per)
                add(writer, writer[1], f"a{layer}.h{h}", f"A{layer}.{h // per}.V", "v", per)
            if graph.parallel[layer]:
                add(writer, writer[1], mlp[0], mlp[1])
        resid += heads
        if not graph.parallel[layer]:
            for writer in resid:
                add(writer, writer[1], mlp[0], mlp[1])
        resid.append(mlp)
    for writer in resid:
        add(writer, writer[1], "logits", "Resid End")
    nodes.append("logits")
    others = set(graph.embeddings[1:])
    unmapped = tuple(i for i, name in enumerate(graph.edges) if name.split("->", 1)[0] in others)
    return _EapLayout(tuple(nodes), tuple(edges), {e.name: e for e in edges}, unmapped)


def _eap_cfg(graph: CircuitGraph, d_model: int) -> dict:
    if len(set(graph.parallel)) > 1:
        raise ValueError("EAP-IG's cfg has one parallel_attn_mlp for all layers; this graph mixes "
                         "parallel and sequential blocks")
    # The keys and order of Graph.from_model for a HookedTransformer.
    return {"n_layers": graph.layers, "n_heads": graph.heads, "parallel_attn_mlp": bool(any(graph.parallel)),
            "d_model": int(d_model)}


def to_eap_ig(graph: CircuitGraph, mask=None, scores=None, *, d_model: int, path=None) -> dict:
    """A circuit as the EAP-IG circuit-graph JSON of hannamw/EAP-IG's ``Graph.to_json`` (what the
    MIB circuit track reads), written to ``path`` when given.

    Args:
        graph: the circuit's graph.
        mask: binary ``(edges,)`` in our edge order, each edge's ``in_graph``; None: no edge is in
            (a scored graph before ``apply_topn``). In a split graph every ``Pos Embed`` edge must
            be kept (EAP-IG has no positional node and never ablates positions).
        scores: ``(edges,)`` in our edge order, each edge's ``score`` (float32); None: 0, as their
            graph starts. A grouped key/value edge's score is split equally over its heads.
        d_model: the model's hidden size (their ``cfg["d_model"]``, which their reader needs).
        path: a file to write the JSON to, byte for byte as ``Graph.to_json`` writes it.

    Returns:
        ``{"cfg", "nodes", "edges"}`` as described in the module docstring.

    Raises:
        ValueError: neither mask nor scores, a mask or scores of the wrong shape, a non-binary
            mask, a dropped ``Pos Embed`` edge, or blocks both parallel and sequential.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> graph = circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32)))
        >>> data = to_eap_ig(graph, graph.edge_mask(["Resid Start->A1.2.K", "A1.2->Resid End"]), d_model=32)
        >>> [name for name, edge in data["edges"].items() if edge["in_graph"]]
        ['input->a1.h2<k>', 'a1.h2->logits']
        >>> data["cfg"]
        {'n_layers': 2, 'n_heads': 4, 'parallel_attn_mlp': False, 'd_model': 32}
    """
    if mask is None and scores is None:
        raise ValueError("give a mask, scores or both")
    layout = _eap_layout(graph)
    kept = torch.zeros(graph.num_edges, dtype=torch.bool) if mask is None else _binary_mask(graph, mask)
    values = torch.zeros(graph.num_edges) if scores is None else _float_scores(graph, scores)
    if layout.unmapped and not bool(kept[list(layout.unmapped)].all()):
        dropped = [graph.edges[i] for i in layout.unmapped if not kept[i]]
        raise ValueError(f"EAP-IG has no node for {sorted(set(graph.embeddings[1:]))}: its input is the token "
                         f"embedding and it never ablates positions, so every such edge must stay in the circuit; "
                         f"dropped: {dropped[:3]}{' ...' if len(dropped) > 3 else ''}. Keep them, or use "
                         "circuit_graph(model, embeddings='joint')")
    idx = torch.tensor([e.index for e in layout.edges], dtype=torch.long)
    copies = torch.tensor([e.copies for e in layout.edges], dtype=torch.float32)
    # Divided in float32, as their float32 score matrix would hold each head's share.
    their_scores = (values[idx] / copies).tolist()
    their_kept = kept[idx].tolist()
    has_out, has_in = set(), set()
    for e, k in zip(layout.edges, their_kept):
        if k:
            has_out.add(e.parent)
            has_in.add(e.child)
    nodes = {n: {"in_graph": n == "logits" or (n in has_out and (n == "input" or n in has_in))} for n in layout.nodes}
    edges = {e.name: {"score": s, "in_graph": k} for e, s, k in zip(layout.edges, their_scores, their_kept)}
    data = {"cfg": _eap_cfg(graph, d_model), "nodes": nodes, "edges": edges}
    if path is not None:
        _dump(data, path)
    return data


def _unknown_eap_edge(layout: _EapLayout, name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(layout.by_name), n=3)
    return ValueError(f"no EAP-IG edge {name!r} in this graph ({len(layout.edges)} edges, e.g. "
                      f"{layout.edges[0].name!r})" + (f"; did you mean {close}?" if close else ""))


def _merge(graph: CircuitGraph, kept: torch.Tensor, copies: torch.Tensor, kv_merge: str, describe) -> torch.Tensor:
    """One bool per our edge from ``kept`` (how many of its copies are in) out of ``copies``."""
    if kv_merge == "any":
        return kept > 0
    if kv_merge == "all":
        return kept == copies
    split = (kept > 0) & (kept < copies)
    if bool(split.any()):
        i = int(torch.nonzero(split)[0])
        raise ValueError(f"{graph.edges[i]!r} is kept for {int(kept[i])} of its {int(copies[i])} query heads "
                         f"({describe(i)}): our grouped-query graph has one key/value edge per group. Pass "
                         "kv_merge='any' or 'all' to merge them")
    return kept > 0


def from_eap_ig(graph: CircuitGraph, source, *, kv_merge: str = "strict") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read an EAP-IG / MIB circuit-graph JSON (a dict or a path) as a mask and scores over ``graph``.

    Args:
        graph: the graph of the model the circuit is for.
        source: the dict, or a path to the file (``Graph.to_json`` of hannamw/EAP-IG).
        kv_merge: how a grouped-query graph merges the per-head key/value edges of one group:
            ``"strict"`` (raise when they disagree), ``"any"`` or ``"all"``.

    Returns:
        ``(mask, scores)``: the float 0/1 ``(edges,)`` mask in our edge order, and float32
        ``(edges,)`` scores (an edge absent from the file scores 0, as in their graph; a grouped
        key/value edge scores the sum of its heads'), or None when no edge has a score. In a
        split graph every ``Pos Embed`` edge is kept, with score 0.

    Raises:
        ValueError: a missing section, a cfg size that differs from the graph's, an unknown node or
            edge name (with near misses), an edge without a bool ``in_graph``, a neuron-level node
            only partly kept, or (``"strict"``) key/value heads of one group that disagree.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> graph = circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32)))
        >>> data = {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32},
        ...         "nodes": {}, "edges": {"a0.h1->a1.h2<q>": {"score": 0.5, "in_graph": True}}}
        >>> mask, scores = from_eap_ig(graph, data)
        >>> graph.edge_names(mask), scores[graph.edge_index("A0.1->A1.2.Q")].item()
        (['A0.1->A1.2.Q'], 0.5)
    """
    _check_kv_merge(kv_merge)
    data = _load(source)
    missing = [k for k in ("cfg", "nodes", "edges") if k not in data]
    if missing:
        raise ValueError(f"not an EAP-IG circuit-graph JSON: missing {missing} (expected cfg, nodes, edges)")
    cfg = data["cfg"]
    for key, value in (("n_layers", graph.layers), ("n_heads", graph.heads)):
        if cfg.get(key) != value:
            raise ValueError(f"EAP-IG cfg {key}={cfg.get(key)!r} does not match the graph's {value}")
    if "parallel_attn_mlp" in cfg and bool(cfg["parallel_attn_mlp"]) != bool(any(graph.parallel)):
        raise ValueError(f"EAP-IG cfg parallel_attn_mlp={cfg['parallel_attn_mlp']!r} does not match the graph's "
                         f"{bool(any(graph.parallel))}")
    layout = _eap_layout(graph)
    known = set(layout.nodes)
    for name, node in data["nodes"].items():
        if name not in known:
            close = difflib.get_close_matches(name, layout.nodes, n=3)
            raise ValueError(f"no EAP-IG node {name!r} in this graph" + (f"; did you mean {close}?" if close else ""))
        neurons = node.get("neurons") if isinstance(node, Mapping) else None
        # A partly kept neuron-level node ablates some of its output dimensions, which an edge mask cannot say.
        if neurons is not None and node.get("in_graph", True) and not all(neurons):
            raise ValueError(f"EAP-IG node {name!r} keeps {sum(map(bool, neurons))} of its {len(neurons)} neurons: "
                             "a neuron-level circuit has no edge mask")
    n = graph.num_edges
    kept = torch.zeros(n)  # how many of each edge's copies are in
    # Summed in float64: the float32 shares of a split score add back to it exactly when H/G is a power of two.
    total = torch.zeros(n, dtype=torch.float64)
    copies = torch.ones(n)
    any_score = False
    for name, entry in data["edges"].items():
        edge = layout.by_name.get(name)
        if edge is None:
            raise _unknown_eap_edge(layout, name)
        in_graph = entry.get("in_graph") if isinstance(entry, Mapping) else None
        if not isinstance(in_graph, bool):
            raise ValueError(f"EAP-IG edge {name!r}: 'in_graph' must be true or false, got {in_graph!r}")
        i = edge.index
        kept[i] += in_graph
        copies[i] = edge.copies
        if "score" in entry:
            total[i] += float(entry["score"])
            any_score = True

    def describe(i):
        heads = [e.name for e in layout.edges if e.index == i]
        return ", ".join(f"{h}: {'in' if data['edges'].get(h, {}).get('in_graph') else 'out'}" for h in heads)

    mask = _merge(graph, kept, copies, kv_merge, describe).float()
    scores = total.to(torch.float32)
    if layout.unmapped:
        mask[list(layout.unmapped)] = 1.0
    return mask, (scores if any_score else None)


# -- auto-circuit ------------------------------------------------------------------------------

_COMBINED = re.compile(r"^A(\d+)\.(\d+)$")
_KV = re.compile(r"^A(\d+)\.(\d+)\.([KV])$")


def _auto_readers(graph: CircuitGraph, reader: str) -> list[tuple[str, int, int]]:
    """Our readers for one auto-circuit destination, each with the query head that reads it and how
    many query heads share it (H/G for a grouped key/value reader, else 1)."""
    per = graph.heads // graph.kv_heads
    combined = _COMBINED.match(reader)
    if combined:  # separate_qkv=False: one destination reads the head's q, k and v inputs
        layer, head = map(int, combined.groups())
        return [(f"A{layer}.{head}.Q", head, 1), (f"A{layer}.{head // per}.K", head, per),
                (f"A{layer}.{head // per}.V", head, per)]
    kv = _KV.match(reader)
    if kv and per > 1:  # the ungrouped model's per-head key/value input
        layer, head, letter = kv.groups()
        return [(f"A{layer}.{int(head) // per}.{letter}", int(head), per)]
    return [(reader, 0, 1)]


def to_auto_circuit(graph: CircuitGraph, mask) -> set[str]:
    """The names of the edges a binary mask keeps, as UFO-101/auto-circuit's ``Edge.name``
    (``separate_qkv=True``).

    With one embedding writer and plain multi-head attention these are exactly
    ``graph.edge_names(mask)``. In a split graph ``Resid Start->X`` stands for the ``Tok Embed``
    and ``Pos Embed`` edges into X together; with grouped-query attention a group's key/value edge
    becomes one edge per query head of the group (auto-circuit runs the ungrouped model).

    Raises:
        ValueError: a mask of the wrong shape or not binary, or (split graph) a reader that keeps one
            embedding edge and drops the other.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> graph = circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32)))
        >>> sorted(to_auto_circuit(graph, graph.edge_mask(["A0.1->A1.2.V", "MLP 1->Resid End"])))
        ['A0.1->A1.2.V', 'MLP 1->Resid End']
    """
    kept = _binary_mask(graph, mask)
    per = graph.heads // graph.kv_heads
    embeddings = set(graph.embeddings)
    names, embedding_edges = set(), {}
    for i in torch.nonzero(kept).flatten().tolist():
        writer, reader = graph.edges[i].split("->", 1)
        if writer in embeddings:
            embedding_edges.setdefault(reader, set()).add(writer)
            writer = "Resid Start"
        kv = _KV.match(reader)
        if kv and per > 1:
            layer, group, letter = kv.groups()
            names |= {f"{writer}->A{layer}.{h}.{letter}" for h in range(int(group) * per, (int(group) + 1) * per)}
        else:
            names.add(f"{writer}->{reader}")
    for reader, writers in embedding_edges.items():
        if len(writers) != len(embeddings):
            raise ValueError(f"auto-circuit's single embedding node Resid Start cannot keep {sorted(writers)} and drop "
                             f"{sorted(embeddings - writers)} into {reader!r}; keep both or neither")
    return names


def from_auto_circuit(graph: CircuitGraph, names: Iterable, *, kv_merge: str = "strict") -> torch.Tensor:
    """The float 0/1 ``(edges,)`` mask keeping UFO-101/auto-circuit's edges ``names``.

    Args:
        graph: the graph of the model.
        names: edge names (``"{src}->{dest}"``) or auto-circuit ``Edge`` objects (anything with a
            ``name``). A destination ``A{l}.{h}`` (auto-circuit's ``separate_qkv=False``) keeps the
            head's query, key and value edges; ``Resid Start`` keeps every embedding writer's edge.
        kv_merge: with grouped-query attention, how the per-head key/value edges of one group
            merge: ``"strict"`` (raise when the heads disagree), ``"any"`` or ``"all"``.

    Raises:
        ValueError: an unknown edge name (with near misses), or (``"strict"``) key/value heads of one
            group that disagree.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from neurosurgeon.circuits import circuit_graph
        >>> graph = circuit_graph(GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32)))
        >>> graph.edge_names(from_auto_circuit(graph, ["A0.1->A1.2"]))
        ['A0.1->A1.2.Q', 'A0.1->A1.2.K', 'A0.1->A1.2.V']
    """
    _check_kv_merge(kv_merge)
    n = graph.num_edges
    heads: dict[int, set[int]] = {}  # per our edge, the query heads that keep it
    copies = torch.ones(n)
    for item in names:
        name = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(name, str) or "->" not in name:
            raise ValueError(f"expected an edge name 'src->dest' or an object with one in .name, got {item!r}")
        writer, reader = name.split("->", 1)
        writers = graph.embeddings if writer == "Resid Start" else (writer,)
        for ours, head, share in _auto_readers(graph, reader):
            for w in writers:
                try:
                    i = graph.edge_index(f"{w}->{ours}")
                except ValueError:
                    close = difflib.get_close_matches(name, to_auto_circuit(graph, torch.ones(n)), n=3)
                    raise ValueError(f"auto-circuit edge {name!r} is not in this graph"
                                     + (f"; did you mean {close}?" if close else "")) from None
                heads.setdefault(i, set()).add(head)
                copies[i] = share
    kept = torch.zeros(n)
    for i, keeping in heads.items():
        kept[i] = len(keeping)

    def describe(i):
        return f"query heads {sorted(heads[i])}"

    return _merge(graph, kept, copies, kv_merge, describe).float()
