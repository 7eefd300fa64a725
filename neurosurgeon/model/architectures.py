"""Where the transformer blocks, attention and MLP modules, residual-stream hook points and
attention heads sit in each model family.

One row per architecture, under the module names of transformers 5. Module-path globs follow
:mod:`.select` (``*`` within one dotted part, ``**`` across parts). The table's globs start with
``**`` glued to a name (``**h.*``, not ``**.h.*``) so that one glob matches both a base model
(``h.0`` in ``GPT2Model``) and the same model under a task head (``transformer.h.0`` in
``GPT2LMHeadModel``).

Head patterns are einops reductions from a layer's WEIGHT to its head mask: ``nn.Linear``
stores (out, in), GPT-2's ``Conv1D`` stores (in, out). Axis ``h`` is the head, ``d`` the
feature within a head (inferred), ``qkv`` the query/key/value part of a fused projection
(always 3), ``i``/``o`` the untouched input/output features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import einops
import torch
import torch.nn as nn

from ..functional.kinds import KINDS
from ..modules import SUPPORTED_LAYERS, MaskLayer
from .select import match_names

__all__ = ["Architecture", "ARCHITECTURES", "architecture_of", "resolve_architecture", "attention_heads"]

# Heads live in projections with a 2-d weight (from the layer-kind table: nn.Linear, GPT-2's Conv1D).
# A mask layer counts as the layer it wraps, so heads are found before and after inject_masks.
_HEAD_KINDS = tuple(kind for kind, row in KINDS.items() if row.dims == 2)


def _is_head_layer(m: nn.Module) -> bool:
    kind = m.layer_kind if isinstance(m, MaskLayer) else SUPPORTED_LAYERS.get(type(m))
    return kind in _HEAD_KINDS

# Configs without grouped-query attention may leave the key/value head count unset.
_FALLBACK = {"num_key_value_heads": "num_attention_heads"}


@dataclass(frozen=True)
class Architecture:
    """Module-path templates of one model family.

    Attributes:
        name: the row's key in :data:`ARCHITECTURES`, e.g. ``"gpt2"``.
        model_types: the ``config.model_type`` values it serves.
        layers: glob (from the model root) matching every transformer block, in order.
        attention: a block's attention module, relative to the block.
        mlp: a block's MLP module, relative to the block.
        heads: glob of each attention projection (from the model root) ->
            (einops pattern from its weight to its head mask, config attribute giving ``h``).
        attention_update: module (relative to the block) whose output, or its first element
            if a tuple, is what attention adds to the residual stream; default ``attention``.
        attention_stream: module (relative to the block) whose output is the residual stream
            after attention, in a post-norm block (BERT); None (default) for a pre-norm block,
            where that stream is the block's input plus the attention update.
        mlp_update: module (relative to the block) whose output is what the MLP adds to the
            residual stream; default ``mlp``. The stream after the MLP is the block's output.
        mlp_down: the MLP's output projection (relative to the block), a linear layer whose
            input features are the MLP's neurons; None if unknown (no neuron units then).
        mlp_neurons: ``(mlp module, its input) -> the neurons' activations``, the MLP's forward
            up to ``mlp_down``, which reads them; None if unknown (no neuron units then).

    The circuit graph (:mod:`neurosurgeon.circuits`) reads these too; module names ending a
    path (``"ln_f"`` finds ``transformer.ln_f``), so one row serves a base model and its heads:

    Attributes:
        embeddings: the embedding modules, token first, then (if learned) position.
        norms: a block's two norms, before attention and before the MLP (pre-norm), or after
            each sublayer's residual add (post-norm), relative to the block.
        final_norm: the norm after the last block, if any.
        unembed: the module mapping the final stream to logits, if the model has one.
        rotary: the module giving rotary (cos, sin) for position ids, if positions are rotary.
        parallel_residual: the config attribute that, when true, makes a block's MLP read the
            same stream as its attention (GPT-NeoX); None: always sequential.
        attention_scale: ``(config, layer index, head dim) -> float`` multiplying the query-key
            scores; None: ``head_dim ** -0.5``.
        causal: whether a position attends only to itself and earlier positions (decoders).
        circuit_types: the ``model_type`` values whose blocks the circuit forward reproduces
            exactly from these fields (Gemma scales its embeddings and Qwen3 normalises queries
            and keys inside the model's own code, so the llama row leaves them out).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    attention: str
    mlp: str
    heads: Mapping[str, tuple[str, str]] = field(hash=False)
    attention_update: str | None = None
    attention_stream: str | None = None
    mlp_update: str | None = None
    mlp_down: str | None = None
    mlp_neurons: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = field(default=None, hash=False)
    embeddings: tuple[str, ...] = ()
    norms: tuple[str, str] | None = None
    final_norm: str | None = None
    unembed: str | None = None
    rotary: str | None = None
    parallel_residual: str | None = None
    attention_scale: Callable[[Any, int, int], float] | None = field(default=None, hash=False)
    causal: bool = True
    circuit_types: tuple[str, ...] = ()

    @property
    def post_norm(self) -> bool:
        """Whether the residual stream is re-normalised after each sublayer (BERT)."""
        return self.attention_stream is not None

    def __post_init__(self):
        # Frozen dataclass: fill the defaults that name another field through object.__setattr__.
        if self.attention_update is None:
            object.__setattr__(self, "attention_update", self.attention)
        if self.mlp_update is None:
            object.__setattr__(self, "mlp_update", self.mlp)


def _qkvo(prefix: str, q: str, k: str, v: str, o: str, kv_heads: str = "num_attention_heads") -> dict:
    # Separate projections: q/k/v split their output features into heads, o its input features.
    return {
        f"{prefix}.{q}": ("(h d) i -> h", "num_attention_heads"),
        f"{prefix}.{k}": ("(h d) i -> h", kv_heads),
        f"{prefix}.{v}": ("(h d) i -> h", kv_heads),
        f"{prefix}.{o}": ("o (h d) -> h", "num_attention_heads"),
    }


def _gpt2_scale(config, layer: int, head_dim: int) -> float:
    # GPT2Attention divides the scores by sqrt(head_dim) and, if asked, by the layer's number.
    scale = head_dim ** -0.5 if config.scale_attn_weights else 1.0
    return scale / (layer + 1) if config.scale_attn_by_inverse_layer_idx else scale


_ROWS = [
    # BertModel, RobertaModel, ...: attention.self.{query,key,value} and attention.output.dense.
    # The MLP is split over two sibling modules; "intermediate" holds the first Linear, while
    # "output" holds the second with the residual add and LayerNorm. Post-norm: the updates are
    # the two output projections, and attention.output returns the normed stream.
    Architecture(
        "bert", ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie"),
        layers="**encoder.layer.*", attention="attention", mlp="intermediate",
        heads=_qkvo("**encoder.layer.*.attention", "self.query", "self.key", "self.value", "output.dense"),
        attention_update="attention.output.dense", attention_stream="attention.output", mlp_update="output.dense",
        mlp_down="output.dense", mlp_neurons=lambda mlp, x: mlp(x), embeddings=("embeddings",), norms=("attention.output.LayerNorm", "output.LayerNorm"),
        unembed="cls", causal=False, circuit_types=("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie"),
    ),
    # Post-norm too: sa_layer_norm(attention + input), then output_layer_norm(ffn + that).
    Architecture(
        "distilbert", ("distilbert",), layers="**transformer.layer.*", attention="attention", mlp="ffn",
        heads=_qkvo("**transformer.layer.*.attention", "q_lin", "k_lin", "v_lin", "out_lin"),
        attention_stream="sa_layer_norm",
    ),
    # GPT2Attention splits c_attn's output into [q | k | v], each viewed as (h, d).
    Architecture(
        "gpt2", ("gpt2",), layers="**h.*", attention="attn", mlp="mlp",
        heads={
            "**h.*.attn.c_attn": ("i (qkv h d) -> qkv h", "num_attention_heads"),
            "**h.*.attn.c_proj": ("(h d) o -> h", "num_attention_heads"),
        },
        mlp_down="mlp.c_proj", mlp_neurons=lambda mlp, x: mlp.act(mlp.c_fc(x)), embeddings=("wte", "wpe"), norms=("ln_1", "ln_2"), final_norm="ln_f",
        unembed="lm_head", attention_scale=_gpt2_scale, circuit_types=("gpt2",),
    ),
    # GPTNeoXAttention views query_key_value's output as (h, 3 * d) and chunks the last axis,
    # so the features are head-major: [q_0 k_0 v_0 | q_1 k_1 v_1 | ...], not GPT-2's [q | k | v].
    # With use_parallel_residual (the default) the MLP reads the block input, not the stream
    # after attention; that stream is still the block input plus the attention update.
    Architecture(
        "gpt_neox", ("gpt_neox",), layers="**layers.*", attention="attention", mlp="mlp",
        heads={
            "**layers.*.attention.query_key_value": ("(h qkv d) i -> qkv h", "num_attention_heads"),
            "**layers.*.attention.dense": ("o (h d) -> h", "num_attention_heads"),
        },
        mlp_down="mlp.dense_4h_to_h", mlp_neurons=lambda mlp, x: mlp.act(mlp.dense_h_to_4h(x)),
        embeddings=("embed_in",), norms=("input_layernorm", "post_attention_layernorm"),
        final_norm="final_layer_norm", unembed="lm_head", rotary="rotary_emb",
        parallel_residual="use_parallel_residual", circuit_types=("gpt_neox",),
    ),
    Architecture(
        "vit", ("vit",), layers="**layers.*", attention="attention", mlp="mlp",
        heads=_qkvo("**layers.*.attention", "q_proj", "k_proj", "v_proj", "o_proj"),
    ),
    # Grouped-query attention: k_proj / v_proj have num_key_value_heads heads; d is inferred, so
    # a config whose head_dim differs from hidden_size / num_attention_heads (Gemma) fits too.
    Architecture(
        "llama", ("llama", "mistral", "qwen2", "qwen3", "gemma"), layers="**layers.*", attention="self_attn", mlp="mlp",
        heads=_qkvo("**layers.*.self_attn", "q_proj", "k_proj", "v_proj", "o_proj", kv_heads="num_key_value_heads"),
        mlp_down="mlp.down_proj", mlp_neurons=lambda mlp, x: mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x),
        embeddings=("embed_tokens",), norms=("input_layernorm", "post_attention_layernorm"),
        final_norm="norm", unembed="lm_head", rotary="rotary_emb", circuit_types=("llama", "mistral", "qwen2"),
    ),
    # Tracr's compiled transformers (neurosurgeon.circuits.tracr.TracrModel; Lindner et al. 2023, arXiv
    # 2301.05062): no layer norm (identity modules fill the norm slots), a ReLU MLP, learned positions,
    # no final norm, and every position attended (tracr compiles non-causal unless asked otherwise).
    Architecture(
        "tracr", ("tracr",), layers="**layers.*", attention="self_attn", mlp="mlp",
        heads=_qkvo("**layers.*.self_attn", "q_proj", "k_proj", "v_proj", "o_proj"),
        mlp_down="mlp.fc_out", mlp_neurons=lambda mlp, x: mlp.act(mlp.fc_in(x)),
        embeddings=("embed_tokens", "embed_positions"), norms=("attn_norm", "mlp_norm"),
        unembed="unembed", causal=False, circuit_types=("tracr",),
    ),
]

#: Every known architecture by name.
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _ROWS}


def _known() -> str:
    return "; ".join(f"{a.name} ({', '.join(a.model_types)})" for a in _ROWS)


def architecture_of(model_or_config) -> Architecture:
    """The :data:`ARCHITECTURES` row serving a model or config, found by ``config.model_type``.

    Args:
        model_or_config: a model with a ``config`` attribute, or the config itself.

    Returns:
        the matching :class:`Architecture`.

    Raises:
        ValueError: the model type is in no row.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> architecture_of(GPT2LMHeadModel(GPT2Config(n_layer=2))).name
        'gpt2'
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for arch in _ROWS:
        if model_type in arch.model_types:
            return arch
    raise ValueError(
        f"no known architecture for model_type {model_type!r} ({type(model_or_config).__name__}); "
        f"known: {_known()}. Pass templates={{glob: (einops pattern, sizes)}} to name its attention projections"
    )


def resolve_architecture(model: nn.Module | None, architecture=None) -> Architecture:
    """The row to use for ``model``: the one forced by ``architecture``, else the one serving it.

    Args:
        model: the model (read for ``config.model_type`` when ``architecture`` is None).
        architecture: None, an :class:`Architecture` (a user's own templates), a row name in
            :data:`ARCHITECTURES`, or a ``model_type`` some row serves (``"roberta"``).

    Returns:
        the :class:`Architecture`.

    Raises:
        ValueError: the name or the model's type is in no row.
    """
    if architecture is None:
        return architecture_of(model)
    if isinstance(architecture, Architecture):
        return architecture
    if isinstance(architecture, str):
        if architecture in ARCHITECTURES:
            return ARCHITECTURES[architecture]
        for arch in _ROWS:
            if architecture in arch.model_types:
                return arch
    raise ValueError(f"unknown architecture {architecture!r}; known: {_known()}, or pass an Architecture")


def _config_int(config, attr: str) -> int:
    value = getattr(config, attr, None)
    if value is None and attr in _FALLBACK:
        value = getattr(config, _FALLBACK[attr], None)
    if not isinstance(value, int):
        raise ValueError(f"{type(config).__name__}.{attr} is {value!r}; cannot size the attention heads")
    return value


def _axes(pattern: str) -> list[str]:
    lhs = pattern.split("->")[0]
    return lhs.replace("(", " ").replace(")", " ").split()


def _row_templates(arch: Architecture, config) -> dict[str, tuple[str, dict[str, int]]]:
    out = {}
    for glob, (pattern, attr) in arch.heads.items():
        sizes = {"h": _config_int(config, attr)}
        if "qkv" in _axes(pattern):
            sizes["qkv"] = 3
        out[glob] = (pattern, sizes)
    return out


def attention_heads(model: nn.Module, *, architecture=None, templates=None) -> dict[str, tuple[str, dict[str, int]]]:
    """Every attention projection of ``model`` with the einops pattern that reduces its weight to heads.

    Args:
        model: the model; only its ``nn.Linear`` and ``transformers.pytorch_utils.Conv1D``
            modules (by exact type) are candidates, and mask layers wrapping one of those.
        architecture: a name in :data:`ARCHITECTURES` or an :class:`Architecture`, forcing that
            row; default: found from ``model.config.model_type``.
        templates: ``{glob: (einops pattern, sizes)}`` for a model in no row, sizes naming enough
            axis sizes (``h``, and ``qkv`` where fused) for einops to split the weight; skips
            the table and needs no config.

    Returns:
        ``{module name: (pattern, sizes)}`` in ``named_modules`` order, such that
        ``einops.reduce(module.weight, pattern, "sum", **sizes)`` has one entry per head
        (shape ``(h,)``, or ``(qkv, h)`` for a fused projection).

    Raises:
        ValueError: the architecture is unknown, a glob matches no Linear/Conv1D module, a
            module matches two globs, or a pattern does not fit a module's weight.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> attention_heads(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=12)))["transformer.h.0.attn.c_attn"]
        ('i (qkv h d) -> qkv h', {'h': 12, 'qkv': 3})
    """
    if templates is not None:
        if architecture is not None:
            raise ValueError("give architecture= or templates=, not both")
        chosen = {glob: (pattern, dict(sizes)) for glob, (pattern, sizes) in templates.items()}
        if not chosen:
            raise ValueError("templates is empty; give {glob: (einops pattern, sizes)}")
    else:
        chosen = _row_templates(resolve_architecture(model, architecture), model.config)

    layers = {n: m for n, m in model.named_modules() if _is_head_layer(m)}
    found: dict[str, tuple[str, dict[str, int]]] = {}
    for glob, spec in chosen.items():
        try:
            hits = match_names(layers, glob)
        except ValueError as e:
            raise ValueError(f"attention template {glob!r} matches no nn.Linear or Conv1D module of "
                             f"{type(model).__name__}") from e
        for name in hits:
            if name in found:
                raise ValueError(f"module {name!r} matches two attention templates")
            # A meta tensor checks that the sizes divide the weight's axes without any compute.
            try:
                einops.reduce(torch.empty(layers[name].weight.shape, device="meta"), spec[0], "sum", **spec[1])
            except einops.EinopsError as e:
                raise ValueError(f"attention pattern {spec[0]!r} with {spec[1]} does not fit {name!r}: {e}") from e
            found[name] = (spec[0], dict(spec[1]))
    return {n: found[n] for n in layers if n in found}
