"""Compiled transformers with a known circuit: Tracr (Lindner et al. 2023, "Tracr: Compiled Transformers as
a Laboratory for Interpretability", arXiv 2301.05062) as torch models the circuit graph reads.

Tracr compiles a RASP program (Weiss et al. 2021, "Thinking Like Transformers", arXiv 2106.06981)
into transformer weights: every variable of the program gets its own basis directions of the
residual stream (``residual_labels``), every RASP operation becomes one attention head or one MLP
reading and writing those directions, and what no operation needs is exactly zero. So which writer
feeds which reader is readable from the weights, and :func:`program_circuit` reads it; given the
selector each head implements (``info["selectors"]`` of :func:`load_tracr`, recorded by
``scripts/compile_tracr.py``), it also drops the inputs the program never compares.

An assembled tracr model (``tracr.compiler.compiling.compile_rasp_to_model``) has (tracr's
``tracr/transformer/model.py`` and ``tracr/compiler/assemble.py``):

- one-hot token and position embeddings ``token_embed`` and ``pos_embed`` (the token embedding also
  writes the constant ``one`` direction that stands in for every bias);
- L layers, each an attention block then an MLP block, with no layer norm; a block the program does
  not use is all zeros;
- attention with ``num_heads`` heads of width ``key_size`` (``h`` heads of a layer used, the rest
  zero), scores ``q k / sqrt(key_size)``, non-causal unless compiled with ``causal=True``;
- ReLU MLPs of width ``mlp_hidden_size`` (zero-padded);
- an unembedding that projects the residual onto the output variable's directions (categorical
  outputs are decoded by argmax; a numerical output is that one direction).

Its parameters are haiku's ``{"transformer/layer_{l}/attn/{query,key,value,linear}": {"w", "b"},
"transformer/layer_{l}/mlp/{linear_1,linear_2}": ..., "token_embed": {"embeddings"},
"pos_embed": ...}`` with ``w`` stored (in, out). :func:`from_tracr` maps them, flattened to
``"{module}/{name}"`` keys, and the unembedding matrix ``"unembed"`` (residual, outputs) onto:

- a :class:`~transformers.GPT2LMHeadModel` for a causal model: GPT-2 computes ``n_embd = n_head *
  head_dim``, so the head width is padded to ``d = max(key_size, ceil(D / H))`` and the residual to
  ``H d`` with zero features; ``scale_attn_weights=False`` with the queries multiplied by
  ``key_size ** -0.5`` keeps tracr's scale; the layer norms are :class:`torch.nn.Identity`; the LM
  head is replaced by the unembedding (outputs, not the input vocabulary);
- a :class:`TracrModel` (architecture row ``"tracr"``) otherwise, since GPT-2 always masks later
  positions; its modules are tracr's own, with no padding at all.

Both are exact: the forward equals tracr's to float rounding (tested against tracr's outputs).
Files written by ``scripts/compile_tracr.py`` load with :func:`load_tracr`; tracr itself (the
``tracr`` extra) is needed only to compile.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import TokenClassifierOutput
from transformers.pytorch_utils import Conv1D

from ..model.select import match_names
from .forward import _attention_weights, _find
from .graph import CircuitGraph

__all__ = ["TracrConfig", "TracrModel", "from_tracr", "from_assembled", "load_tracr", "save_tracr", "tracr_params",
           "edge_features", "program_edges", "program_circuit"]


class TracrConfig(PretrainedConfig):
    """Sizes of a compiled tracr model (``model_type="tracr"``, the architecture row ``"tracr"``).

    Args:
        vocab_size: input tokens (tracr's input encoding, BOS and PAD included).
        output_size: output features (the output variable's values; 1 for a numerical output).
        hidden_size: the residual width D (tracr's ``residual_labels``).
        num_hidden_layers, num_attention_heads: L and H (tracr's ``num_layers``, ``num_heads``).
        head_dim: tracr's ``key_size`` (queries, keys and values all have it).
        intermediate_size: tracr's ``mlp_hidden_size``.
        max_position_embeddings: rows of the position embedding (``max_seq_len + 1`` with BOS).
    """

    model_type = "tracr"

    def __init__(self, vocab_size: int = 1, output_size: int = 1, hidden_size: int = 1, num_hidden_layers: int = 1,
                 num_attention_heads: int = 1, head_dim: int = 1, intermediate_size: int = 1,
                 max_position_embeddings: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.output_size, self.hidden_size = vocab_size, output_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.head_dim = head_dim
        self.intermediate_size, self.max_position_embeddings = intermediate_size, max_position_embeddings


class _Attention(nn.Module):
    # tracr's MultiHeadAttention: separate query/key/value/output projections, every position attended.
    def __init__(self, c: TracrConfig):
        super().__init__()
        inner = c.num_attention_heads * c.head_dim
        self.heads, self.head_dim = c.num_attention_heads, c.head_dim
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(c.hidden_size, inner) for _ in range(3))
        self.o_proj = nn.Linear(inner, c.hidden_size)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj,
                                                                                        self.v_proj))
        scores = q @ k.transpose(-1, -2) * self.head_dim ** -0.5
        if key_padding is not None:
            scores = scores.masked_fill(~key_padding.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        z = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(z)


class _Block(nn.Module):
    def __init__(self, c: TracrConfig):
        super().__init__()
        # Tracr compiles with layer_norm=False; identity modules fill the architecture row's norm slots.
        self.attn_norm, self.mlp_norm = nn.Identity(), nn.Identity()
        self.self_attn = _Attention(c)
        self.mlp = nn.Sequential(OrderedDict(fc_in=nn.Linear(c.hidden_size, c.intermediate_size), act=nn.ReLU(),
                                             fc_out=nn.Linear(c.intermediate_size, c.hidden_size)))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.attn_norm(x), key_padding)
        return x + self.mlp(self.mlp_norm(x))


class TracrModel(nn.Module):
    """A non-causal compiled tracr model in torch (the ``"tracr"`` architecture row).

    Attributes:
        embed_tokens, embed_positions: tracr's ``token_embed`` and ``pos_embed``.
        layers: blocks, each ``attn_norm`` (identity), ``self_attn`` (``q_proj``, ``k_proj``,
            ``v_proj``, ``o_proj``), ``mlp_norm`` (identity) and ``mlp`` (``fc_in``, ReLU, ``fc_out``).
        unembed: the projection onto the output variable's directions, no bias.

    Example:
        >>> m = TracrModel(TracrConfig(vocab_size=5, output_size=3, hidden_size=8, head_dim=2,
        ...                            num_attention_heads=2, intermediate_size=4, max_position_embeddings=6))
        >>> m(torch.tensor([[0, 1, 2]])).logits.shape
        torch.Size([1, 3, 3])
    """

    def __init__(self, config: TracrConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.num_hidden_layers))
        self.unembed = nn.Linear(config.hidden_size, config.output_size, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenClassifierOutput:
        """Outputs at every position ``(B, T, output_size)``; ``attention_mask`` (B, T) is 0 at keys to ignore."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        for block in self.layers:
            x = block(x, attention_mask)
        return TokenClassifierOutput(logits=self.unembed(x))


# -- from tracr's parameters ---------------------------------------------------------------------------

def tracr_params(assembled) -> dict[str, torch.Tensor]:
    """An assembled tracr model's parameters as ``{"{module}/{name}": tensor}`` (float32), with the
    unembedding matrix under ``"unembed"`` (residual, outputs); needs tracr (the ``tracr`` extra).

    The unembedding is no parameter in tracr (it is built from the residual and output spaces), so
    it is read off by unembedding the identity: row i is what residual direction i contributes.
    """
    import haiku as hk
    import jax.numpy as jnp
    import numpy as np

    params = {f"{module}/{name}": torch.from_numpy(np.array(value, dtype=np.float32))
              for module, values in assembled.params.items() for name, value in values.items()}
    width = params["token_embed/embeddings"].shape[1]

    @hk.without_apply_rng
    @hk.transform
    def unembed(x):
        return assembled.get_compiled_model().unembed(x, use_unembed_argmax=False)

    out = np.array(unembed.apply(assembled.params, jnp.eye(width, dtype=jnp.float32)), dtype=np.float32)
    params["unembed"] = torch.from_numpy(out.reshape(width, -1))
    return params


def _w(params, name, dtype):
    return torch.as_tensor(params[name]).to(dtype)


# tracr's haiku modules of one layer, each with a weight "w" (in, out) and a bias "b".
_MODULES = ("attn/query", "attn/key", "attn/value", "attn/linear", "mlp/linear_1", "mlp/linear_2")


def _check_params(params: Mapping[str, Any], num_heads: int, key_size: int) -> tuple[int, int, int]:
    for need in ("token_embed/embeddings", "pos_embed/embeddings", "unembed"):
        if need not in params:
            raise ValueError(f"params has no {need!r}; give tracr's parameters as {{'module/name': array}} "
                             f"(tracr_params(assembled) makes them), got keys {sorted(params)[:6]}...")
    layers = 0
    while f"transformer/layer_{layers}/attn/query/w" in params:
        layers += 1
    if layers == 0:
        raise ValueError("params has no 'transformer/layer_0/attn/query/w'; not an assembled tracr model")
    missing = [f"transformer/layer_{i}/{module}/{p}" for i in range(layers) for module in _MODULES for p in ("w", "b")
               if f"transformer/layer_{i}/{module}/{p}" not in params]
    if missing:
        raise ValueError(f"params lacks {missing[:4]}{' ...' if len(missing) > 4 else ''} of its {layers} layers")
    for name, value in (("num_heads", num_heads), ("key_size", key_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    inner = params["transformer/layer_0/attn/query/w"].shape[1]
    if inner != num_heads * key_size:
        raise ValueError(f"num_heads {num_heads} * key_size {key_size} must equal the query width {inner}")
    return layers, params["token_embed/embeddings"].shape[1], params["transformer/layer_0/mlp/linear_1/w"].shape[1]


def _tracr_model(params, layers, width, hidden, num_heads, key_size, dtype) -> TracrModel:
    tok, pos, unembed = (_w(params, n, dtype) for n in ("token_embed/embeddings", "pos_embed/embeddings", "unembed"))
    config = TracrConfig(vocab_size=tok.shape[0], output_size=unembed.shape[1], hidden_size=width,
                         num_hidden_layers=layers, num_attention_heads=num_heads, head_dim=key_size,
                         intermediate_size=hidden, max_position_embeddings=pos.shape[0])
    model = TracrModel(config).to(dtype)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(tok)
        model.embed_positions.weight.copy_(pos)
        model.unembed.weight.copy_(unembed.T)
        for i, block in enumerate(model.layers):
            pairs = [(block.self_attn.q_proj, "attn/query"), (block.self_attn.k_proj, "attn/key"),
                     (block.self_attn.v_proj, "attn/value"), (block.self_attn.o_proj, "attn/linear"),
                     (block.mlp.fc_in, "mlp/linear_1"), (block.mlp.fc_out, "mlp/linear_2")]
            for linear, name in pairs:
                # haiku stores (in, out); nn.Linear (out, in).
                linear.weight.copy_(_w(params, f"transformer/layer_{i}/{name}/w", dtype).T)
                linear.bias.copy_(_w(params, f"transformer/layer_{i}/{name}/b", dtype))
    return model.eval()


def _gpt2_model(params, layers, width, hidden, num_heads, key_size, dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok, pos, unembed = (_w(params, n, dtype) for n in ("token_embed/embeddings", "pos_embed/embeddings", "unembed"))
    # GPT-2 ties the residual width to n_head * head_dim: pad the heads, then the residual, with zeros.
    d = max(key_size, math.ceil(width / num_heads))
    n = num_heads * d
    config = GPT2Config(n_layer=layers, n_head=num_heads, n_embd=n, n_inner=hidden, vocab_size=tok.shape[0],
                        n_positions=pos.shape[0], activation_function="relu", scale_attn_weights=False,
                        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    model.lm_head = nn.Linear(n, unembed.shape[1], bias=False)
    model.transformer.ln_f = nn.Identity()
    model = model.to(dtype)

    def heads(w):  # (width, H * key_size) -> (n, H * d): head h at features h*d .. h*d + key_size
        out = w.new_zeros(n, num_heads, d)
        out[:width, :, :key_size] = w.view(width, num_heads, key_size)
        return out.view(n, n)

    def head_bias(b):
        out = b.new_zeros(num_heads, d)
        out[:, :key_size] = b.view(num_heads, key_size)
        return out.view(n)

    def resid(v):  # (..., width) -> (..., n)
        return torch.cat([v, v.new_zeros(*v.shape[:-1], n - width)], -1)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight.copy_(resid(tok))
        model.transformer.wpe.weight.copy_(resid(pos))
        model.lm_head.weight[:, :width] = unembed.T
        scale = key_size ** -0.5  # tracr's q k / sqrt(key_size), folded into the queries
        for i, block in enumerate(model.transformer.h):
            block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
            p = lambda name: _w(params, f"transformer/layer_{i}/{name}", dtype)
            block.attn.c_attn.weight.copy_(torch.cat([heads(p("attn/query/w")) * scale, heads(p("attn/key/w")),
                                                      heads(p("attn/value/w"))], 1))
            block.attn.c_attn.bias.copy_(torch.cat([head_bias(p("attn/query/b")) * scale, head_bias(p("attn/key/b")),
                                                    head_bias(p("attn/value/b"))]))
            block.attn.c_proj.weight.copy_(heads(p("attn/linear/w").T).T)
            block.attn.c_proj.bias.copy_(resid(p("attn/linear/b")))
            block.mlp.c_fc.weight[:width] = p("mlp/linear_1/w")
            block.mlp.c_fc.bias.copy_(p("mlp/linear_1/b"))
            block.mlp.c_proj.weight.copy_(resid(p("mlp/linear_2/w")))
            block.mlp.c_proj.bias.copy_(resid(p("mlp/linear_2/b")))
    return model.eval()


def from_tracr(params: Mapping[str, Any], *, num_heads: int, key_size: int, causal: bool = False,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """The torch model of a compiled tracr model's parameters.

    Args:
        params: ``{"{module}/{name}": array}`` as :func:`tracr_params` gives them: tracr's haiku
            parameters and the unembedding matrix ``"unembed"`` (residual, outputs).
        num_heads, key_size: tracr's ``model_config.num_heads`` and ``key_size``.
        causal: whether tracr compiled it with ``causal=True``.
        dtype: the torch model's dtype.

    Returns:
        a :class:`~transformers.GPT2LMHeadModel` (causal) or a :class:`TracrModel`, in eval mode,
        whose output at every position is tracr's unembedded output (before the argmax).

    Raises:
        ValueError: a parameter is missing, or the head sizes do not fit the query weight.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    layers, width, hidden = _check_params(params, num_heads, key_size)
    build = _gpt2_model if causal else _tracr_model
    return build(params, layers, width, hidden, num_heads, key_size, dtype)


def from_assembled(assembled, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """:func:`from_tracr` of an ``AssembledTransformerModel`` (needs tracr, the ``tracr`` extra)."""
    c = assembled.model_config
    if c.layer_norm:
        raise ValueError("the tracr model has layer norms (model_config.layer_norm=True); compiled models have none")
    return from_tracr(tracr_params(assembled), num_heads=c.num_heads, key_size=c.key_size, causal=bool(c.causal),
                      dtype=dtype)


def save_tracr(params: Mapping[str, torch.Tensor], info: Mapping[str, Any], stem: str | Path) -> tuple[Path, Path]:
    """Write ``{stem}.safetensors`` (the parameters) and ``{stem}.json`` (``info``: at least
    ``num_heads``, ``key_size``, ``causal``; anything else JSON can hold)."""
    from safetensors.torch import save_file

    missing = [k for k in ("num_heads", "key_size", "causal") if k not in info]
    if missing:
        raise ValueError(f"info must name {missing} (from_tracr needs them)")
    stem = Path(stem)
    weights, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    save_file({k: v.contiguous() for k, v in params.items()}, str(weights))
    meta.write_text(json.dumps(dict(info), indent=1, sort_keys=True) + "\n")
    return weights, meta


def load_tracr(stem: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, dict[str, Any]]:
    """The torch model of files written by :func:`save_tracr`, and their ``info``.

    Example:
        >>> model, info = load_tracr("tests/circuits/data/tracr/reverse")  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    stem = Path(stem)
    info = json.loads(stem.with_suffix(".json").read_text())
    params = load_file(str(stem.with_suffix(".safetensors")))
    return from_tracr(params, num_heads=info["num_heads"], key_size=info["key_size"], causal=info["causal"],
                      dtype=dtype), info


# -- the compiled circuit ------------------------------------------------------------------------------

def _in_out(module: nn.Module) -> torch.Tensor:
    # A 2-d weight as (in, out): nn.Linear stores (out, in), GPT-2's Conv1D (in, out).
    return module.weight if isinstance(module, Conv1D) else module.weight.T


def _mlp_ends(mlp: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    layers = [m for m in mlp.modules() if isinstance(m, (nn.Linear, Conv1D))]
    if len(layers) != 2:
        raise ValueError(f"expected an MLP of two linear layers, found {len(layers)} in {type(mlp).__name__}")
    return _in_out(layers[0]), _in_out(layers[1])


def _supports(model: nn.Module, graph: CircuitGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """Which residual features each writer writes ``(W, D)`` and each reader reads ``(R, D)``, bool."""
    arch = graph.architecture
    embeddings = [_find(model, n).weight for n in arch.embeddings]
    if len(graph.embeddings) == 1:
        embeddings = [torch.cat(embeddings)]
    writes = [(e != 0).any(0) for e in embeddings]
    reads = []
    modules = dict(model.named_modules())
    for name in match_names(modules, arch.layers):
        block = modules[name]
        w = _attention_weights(graph, block)  # (heads, d, D) each
        fc_in, fc_out = _mlp_ends(block.get_submodule(arch.mlp))
        writes += [(w.wo[h] != 0).any(0) for h in range(graph.heads)] + [(fc_out != 0).any(0)]
        reads += [(w.wq[h] != 0).any(0) for h in range(graph.heads)]
        reads += [(m[g] != 0).any(0) for m in (w.wk, w.wv) for g in range(graph.kv_heads)]
        reads.append((fc_in != 0).any(1))
    reads.append((_in_out(_find(model, arch.unembed)) != 0).any(1))
    return torch.stack(writes), torch.stack(reads)


def edge_features(model: nn.Module, graph: CircuitGraph) -> torch.Tensor:
    """``(edges, D)`` bool: the residual features each edge carries, those its writer writes with
    non-zero weights and its reader reads with non-zero weights.

    A writer's write weights are its embedding rows, its head's slice of the output projection or
    its MLP's second layer; a reader's read weights are its head's query, key or value slice, its
    MLP's first layer or the unembedding. In a compiled model every RASP variable owns its residual
    directions (tracr's ``residual_labels``) and every other weight is exactly zero, so the
    features name the variables an edge carries. Biases are not counted (tracr's are zero).
    """
    writes, reads = _supports(model, graph)
    return reads[graph.reader_of_edge()] & writes[graph.writer_of_edge()]


def program_edges(model: nn.Module, graph: CircuitGraph) -> torch.Tensor:
    """``(edges,)`` bool: the edges that carry at least one residual feature (:func:`edge_features`)."""
    return edge_features(model, graph).any(-1)


def _fed(graph: CircuitGraph) -> list[list[int]]:
    # The writers each reader's input reaches: a head's query its head, a key or value group's
    # input every head of the group, an MLP's input its MLP, the logits none.
    per_group = graph.heads // graph.kv_heads
    fed: list[list[int]] = []
    for layer in range(graph.layers):
        first = graph.first_writer(layer)
        groups = [[first + g * per_group + j for j in range(per_group)] for g in range(graph.kv_heads)]
        fed += [[first + h] for h in range(graph.heads)] + groups + groups + [[first + graph.heads]]
    return fed + [[]]


def _writes_through(graph: CircuitGraph) -> list[bool]:
    # Readers whose input reaches their writer's output: values and MLP inputs. Queries and keys
    # only weight the values, so a head with no value input writes nothing (tracr has no biases).
    moves: list[bool] = []
    for _ in range(graph.layers):
        moves += [False] * (graph.heads + graph.kv_heads) + [True] * graph.kv_heads + [True]
    return moves + [False]


# The predicates of a RASP Select: the names of tracr.rasp.rasp.Comparison.
_PREDICATES = ("EQ", "LT", "LEQ", "GT", "GEQ", "NEQ", "TRUE", "FALSE")


def _uncompared(graph: CircuitGraph, selectors: Mapping[str, Mapping[str, str]]) -> torch.Tensor:
    # (edges,) bool: the query and key edges of every head whose selector width compares nothing.
    if not isinstance(selectors, Mapping):
        raise ValueError(f"selectors must map head names ('A0.0') to their selectors, as info['selectors'] of "
                         f"load_tracr does, got {type(selectors).__name__}")
    readers = set(graph.readers)
    dropped = set()
    for head, selector in selectors.items():
        if f"{head}.Q" not in readers or f"{head}.K" not in readers:
            raise ValueError(f"selectors names {head!r}, which is no attention head of the graph (heads are named "
                             f"'A{{layer}}.{{head}}', layers 0-{graph.layers - 1}, heads 0-{graph.heads - 1})")
        if not isinstance(selector, Mapping) or selector.get("predicate") not in _PREDICATES:
            raise ValueError(f"selectors[{head!r}] must hold a 'predicate', one of {_PREDICATES}, got {selector!r}")
        if selector.get("operation") not in ("Aggregate", "SelectorWidth"):
            raise ValueError(f"selectors[{head!r}] must hold an 'operation', 'Aggregate' or 'SelectorWidth', got "
                             f"{selector!r}")
        if selector["predicate"] == "TRUE" and selector["operation"] == "SelectorWidth":
            dropped |= {f"{head}.Q", f"{head}.K"}
    return torch.tensor([graph.readers[r] in dropped for r in graph.reader_of_edge().tolist()], dtype=torch.bool)


def program_circuit(model: nn.Module, graph: CircuitGraph, *,
                    selectors: Mapping[str, Mapping[str, str]] | None = None) -> torch.Tensor:
    """``(edges,)`` float 0/1: the compiled program's circuit, read from the weights, or, given the
    heads' ``selectors``, the circuit the program defines.

    Without ``selectors``: the :func:`program_edges` on a path from the embeddings to the logits:
    an edge's writer is an embedding, or a head or MLP whose value or MLP input has such an edge
    and whose output weights are not all zero; its reader is the logits, or feeds a head or MLP
    with such an edge onwards. Every other edge carries exactly zero into the features its reader
    reads, or into a component no output depends on, so the circuit with every other edge
    zero-ablated computes the model's output exactly. It is the compiled program's wiring, the
    ground truth Lindner et al. 2023 offer interpretability methods; an edge of it may still be
    inert for every input (the query and key of a ``TRUE`` selector width, below).

    With ``selectors``: the same paths, without the query and key edges of every head that
    computes ``SelectorWidth`` of a selector whose predicate is ``TRUE`` (e.g. ``length =
    SelectorWidth(Select(tokens, tokens, TRUE))``). That selector selects every key whatever the
    query and key are, so the program reads neither. Tracr's head for it attends to BOS with the
    score of every selected key, so all keys score alike, and they still do when the query and key
    edges are zero-ablated (every score zero): at every position after BOS its attention pattern
    is the same with those edges and without them (at BOS, whose output tracr does not decode, it
    is not). An ``Aggregate`` over a ``TRUE`` selector keeps them: tracr scores BOS at half a
    selected key there, so that BOS is attended only when nothing is selected; with the query or
    the key zero-ablated every key scores zero, BOS joins the average and the output moves.

    Args:
        model, graph: a model of :func:`from_tracr` and its :func:`~neurosurgeon.circuits.circuit_graph`.
        selectors: ``{"A{layer}.{head}": {"operation": "Aggregate" | "SelectorWidth", "predicate":
            "EQ" | "LT" | "LEQ" | "GT" | "GEQ" | "NEQ" | "TRUE" | "FALSE", ...}}`` (the names of
            ``rasp.Comparison``) for the heads the program uses: ``info["selectors"]`` of :func:`load_tracr`.

    Raises:
        ValueError: ``selectors`` names a head the graph lacks, or lacks a valid predicate or operation.

    Example:
        >>> from neurosurgeon.circuits import circuit_graph
        >>> model, info = load_tracr("tests/circuits/data/tracr/reverse")  # doctest: +SKIP
        >>> graph = circuit_graph(model, embeddings="split")  # doctest: +SKIP
        >>> wiring, program = program_circuit(model, graph), program_circuit(  # doctest: +SKIP
        ...     model, graph, selectors=info["selectors"])
        >>> graph.edge_names(wiring - program)  # doctest: +SKIP
        ['Tok Embed->A0.0.Q', 'Tok Embed->A0.0.K']
    """
    edges = program_edges(model, graph)
    if selectors is not None:
        edges = edges & ~_uncompared(graph, selectors).to(edges.device)
    edges = edges.tolist()
    writes = _supports(model, graph)[0].any(1).tolist()
    reader, writer = graph.reader_of_edge().tolist(), graph.writer_of_edge().tolist()
    fed, moves = _fed(graph), _writes_through(graph)
    live = [w < len(graph.embeddings) and writes[w] for w in range(len(graph.writers))]
    # Edges come reader by reader, layer by layer: a writer is settled before anything reads it.
    for i, r in enumerate(reader):
        if edges[i] and live[writer[i]] and moves[r]:
            for o in fed[r]:
                live[o] = writes[o]
    useful = [False] * len(graph.writers)  # reaches the logits; backwards, from the logits
    for i in reversed(range(len(reader))):
        r = reader[i]
        if edges[i] and live[writer[i]] and (not fed[r] or any(useful[o] for o in fed[r])):
            useful[writer[i]] = True
    keep = [edges[i] and live[writer[i]] and (not fed[r] or any(useful[o] for o in fed[r]))
            for i, r in enumerate(reader)]
    return torch.tensor(keep, dtype=torch.float32)
