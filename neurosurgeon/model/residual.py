"""``ResidualUpdateModel``: hooks that record each block's attention and MLP updates and the
residual stream after each, under NeuroSurgeon 0.1.0's names and cache keys.

A transformer block adds two updates to its residual stream ``x``: attention's ``a`` and the
MLP's ``m``. For block ``i`` the cache holds ``attn_update_i`` (``a``), ``attn_stream_i`` (the
stream after attention: ``x + a`` in a pre-norm block, ``LayerNorm(x + a)`` in a post-norm one),
``mlp_update_i`` (``m``) and ``mlp_stream_i`` (the block's output). Where these sit in each
model family comes from :mod:`.architectures`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from transformers import PretrainedConfig

from ..functional._checks import check_bool
from .architectures import ARCHITECTURES, Architecture, architecture_of, resolve_architecture
from .circuit import CircuitModel
from .select import match_names

__all__ = ["ResidualUpdateModelConfig", "ResidualUpdateModel", "plan_hooks", "vector_keys"]

# 0.1.0 called GPT-2 "gpt"; every other 0.1.0 model_type is a row name.
_V0_NAMES = {"gpt": "gpt2"}
_FIELDS = ("model_type", "target_layers", "mlp", "attn", "updates", "stream")


class ResidualUpdateModelConfig(PretrainedConfig):
    """Which blocks and vectors a :class:`ResidualUpdateModel` records (NeuroSurgeon 0.1.0's config).

    Values are checked when the :class:`ResidualUpdateModel` is built.

    Args:
        model_type: the architecture: 0.1.0's ``"bert"``, ``"gpt"``, ``"gpt_neox"``, ``"vit"``,
            or any row name of :data:`neurosurgeon.ARCHITECTURES` (``"llama"``, ...) or
            ``model_type`` a row serves (``"roberta"``); ``"auto"``: from the model's config.
        target_layers: indices of the blocks to hook.
        mlp: record the MLP's vectors.
        attn: record attention's vectors.
        updates: record the updates (``*_update_i``).
        stream: record the residual stream after each update (``*_stream_i``).
    """

    def __init__(self, model_type: str = "auto", target_layers=(), mlp: bool = True, attn: bool = True,
                 updates: bool = True, stream: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.model_type = model_type
        self.target_layers = list(target_layers) if isinstance(target_layers, (list, tuple, range)) else target_layers
        self.mlp, self.attn, self.updates, self.stream = mlp, attn, updates, stream

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``model_type`` included (``PretrainedConfig`` writes the class's, which is empty)."""
        return {**super().to_dict(), "model_type": self.model_type}


def vector_keys(config: ResidualUpdateModelConfig) -> list[str]:
    """The cache keys a model built from ``config`` fills, e.g. ``["attn_update_3", "mlp_stream_3"]``."""
    parts = [p for p, on in (("attn", config.attn), ("mlp", config.mlp)) if on]
    kinds = [k for k, on in (("update", config.updates), ("stream", config.stream)) if on]
    return [f"{p}_{k}_{i}" for i in config.target_layers for p in parts for k in kinds]


def _check_config(config) -> None:
    missing = [f for f in _FIELDS if not hasattr(config, f)]
    if missing:
        raise TypeError(f"config must be a ResidualUpdateModelConfig, got {type(config).__name__} without {missing}")
    for name in ("mlp", "attn", "updates", "stream"):
        check_bool(f"config.{name}", getattr(config, name))
    if not (config.mlp or config.attn):
        raise ValueError("config.mlp and config.attn are both False; set at least one to record anything")
    if not (config.updates or config.stream):
        raise ValueError("config.updates and config.stream are both False; set at least one to record anything")
    layers = config.target_layers
    if (not isinstance(layers, (list, tuple)) or not layers
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        raise ValueError(f"config.target_layers must be a non-empty list of block indices, got {layers!r}")


def _architecture(config, model: nn.Module, architecture) -> Architecture:
    if architecture is not None:
        return resolve_architecture(model, architecture)
    if not isinstance(config.model_type, str):
        raise TypeError(f"config.model_type must be a str, got {config.model_type!r}")
    if config.model_type == "auto":
        return architecture_of(model)
    try:
        arch = resolve_architecture(model, _V0_NAMES.get(config.model_type, config.model_type))
    except ValueError:
        raise ValueError(f"config.model_type is {config.model_type!r}; allowed: 'auto', 'gpt' (0.1.0's GPT-2), "
                         f"{sorted(ARCHITECTURES)} or a model_type they serve") from None
    own = getattr(getattr(model, "config", None), "model_type", None)
    served = [a for a in ARCHITECTURES.values() if own in a.model_types]
    if served and served[0] is not arch:
        raise ValueError(f"config.model_type is {config.model_type!r} (architecture {arch.name!r}) but the model "
                         f"is a {own!r} ({type(model).__name__}, architecture {served[0].name!r})")
    return arch


def _tensor(output, where: str) -> torch.Tensor:
    # transformers 5 blocks return a tensor where 4.x returned a tuple; attention still returns
    # (output, weights). Never index a tensor: output[0] would be the first example.
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"{where} returned {type(output).__name__}; expected a tensor or a tuple starting with one")


def plan_hooks(config, model: nn.Module, architecture=None) -> tuple[Architecture, dict[int, nn.Module]]:
    """Check ``config`` against ``model`` and find the blocks to hook, changing nothing.

    Returns:
        the architecture row and ``{block index: block module}`` for ``config.target_layers``.

    Raises:
        ValueError: naming the config field or template that does not fit the model.
    """
    _check_config(config)
    arch = _architecture(config, model, architecture)
    modules = dict(model.named_modules())
    try:
        names = match_names(modules, arch.layers)
    except ValueError:
        raise ValueError(f"architecture {arch.name!r}: its blocks {arch.layers!r} match no module of "
                         f"{type(model).__name__}; pick the model's architecture") from None
    bad = [i for i in config.target_layers if not 0 <= i < len(names)]
    if bad:
        raise ValueError(f"config.target_layers has {bad}; {type(model).__name__} has {len(names)} blocks, "
                         f"allowed 0..{len(names) - 1}")
    blocks = {i: modules[names[i]] for i in config.target_layers}
    for i, block in blocks.items():
        inside = dict(block.named_modules())
        for path in (arch.attention_update, arch.mlp_update, arch.attention_stream):
            if path is not None and path not in inside:
                raise ValueError(f"architecture {arch.name!r}: block {names[i]!r} has no submodule {path!r}")
    return arch, blocks


# Hooks are small objects rather than closures, so that a deep copy or a pickle of the model
# records into the copy's own cache.
class _Store:
    """Forward hook: ``owner.vector_cache[key]`` = the module's output."""

    def __init__(self, owner: "ResidualUpdateModel", key: str):
        self.owner, self.key = owner, key

    def __call__(self, module, args, output):
        self.owner.vector_cache[self.key] = _tensor(output, self.key).clone()


class _BlockInput:
    """Forward pre-hook of block ``i``: keeps its input for the pre-norm attention stream."""

    def __init__(self, owner: "ResidualUpdateModel", i: int):
        self.owner, self.i = owner, i

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"block {self.i} was called without a hidden-states tensor")
        self.owner._block_inputs[self.i] = x


class _Attention:
    """Forward hook of block ``i``'s attention: its update and, pre-norm, block input + update."""

    def __init__(self, owner: "ResidualUpdateModel", i: int, update: bool, stream: bool):
        self.owner, self.i, self.update, self.stream = owner, i, update, stream

    def __call__(self, module, args, output):
        a = _tensor(output, f"attn_update_{self.i}")
        if self.update:
            self.owner.vector_cache[f"attn_update_{self.i}"] = a.clone()
        if self.stream:
            self.owner.vector_cache[f"attn_stream_{self.i}"] = self.owner._block_inputs.pop(self.i) + a


class ResidualUpdateModel(nn.Module):
    """A model whose forward pass records residual-stream vectors into ``vector_cache``
    (NeuroSurgeon 0.1.0's ``ResidualUpdateModel``).

    Each call of the model replaces ``vector_cache[key]`` for every key of
    :func:`vector_keys`: a ``(batch, tokens, hidden)`` tensor connected to the autograd graph.
    Updates are recorded before the block's residual dropout, so in eval mode
    ``attn_stream_i == x + attn_update_i`` and ``mlp_stream_i == attn_stream_i + mlp_update_i``
    in a pre-norm block (a GPT-NeoX block with parallel residual included). The hooks stay
    until :meth:`remove`, or the end of a ``with`` block.

    Args:
        config: a :class:`ResidualUpdateModelConfig`.
        model: the model to hook: a transformers model, or a :class:`CircuitModel` (its
            wrapped model is hooked).
        architecture: an :class:`Architecture` (own templates) or row name, overriding
            ``config.model_type``.

    Raises:
        ValueError: a bad config value, a block index out of range, or a model that does not
            match the architecture; nothing is hooked then.

    Example:
        >>> import torch, transformers as T
        >>> gpt2 = T.GPT2Model(T.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
        >>> with ResidualUpdateModel(ResidualUpdateModelConfig("gpt", [1], True, False), gpt2) as m:
        ...     _ = m(input_ids=torch.zeros(3, 5, dtype=torch.long))
        >>> m.vector_cache["mlp_update_1"].shape
        torch.Size([3, 5, 16])
    """

    def __init__(self, config: ResidualUpdateModelConfig, model: nn.Module, *, architecture=None):
        super().__init__()
        self.config = config
        self.wrapped_model = model
        self.vector_cache: dict[str, torch.Tensor] = {}
        self.hooks: list = []
        self._block_inputs: dict[int, torch.Tensor] = {}
        self.architecture, blocks = plan_hooks(config, self.to_hook, architecture)
        for i, block in blocks.items():
            self._hook_block(i, block)

    @property
    def to_hook(self) -> nn.Module:
        """The hooked model: ``wrapped_model``, or the model inside it if it is a :class:`CircuitModel`."""
        m = self.wrapped_model
        return m.wrapped_model if isinstance(m, CircuitModel) else m

    def _hook_block(self, i: int, block: nn.Module) -> None:
        arch, cfg = self.architecture, self.config
        pre_norm = arch.attention_stream is None
        keep_input = bool(cfg.attn and cfg.stream and pre_norm)
        hooks = []
        if keep_input:
            hooks.append((block, _BlockInput(self, i)))
        if cfg.attn and (cfg.updates or keep_input):
            hooks.append((block.get_submodule(arch.attention_update), _Attention(self, i, cfg.updates, keep_input)))
        if cfg.attn and cfg.stream and not pre_norm:
            hooks.append((block.get_submodule(arch.attention_stream), _Store(self, f"attn_stream_{i}")))
        if cfg.mlp and cfg.updates:
            hooks.append((block.get_submodule(arch.mlp_update), _Store(self, f"mlp_update_{i}")))
        if cfg.mlp and cfg.stream:
            hooks.append((block, _Store(self, f"mlp_stream_{i}")))
        for module, hook in hooks:
            register = (module.register_forward_pre_hook if isinstance(hook, _BlockInput)
                        else module.register_forward_hook)
            self.hooks.append(register(hook, with_kwargs=isinstance(hook, _BlockInput)))

    def forward(self, *args, **kwargs):
        """Run the wrapped model (its output, unchanged); the hooks fill ``vector_cache``."""
        return self.wrapped_model(*args, **kwargs)

    def remove(self) -> None:
        """Remove every hook; the model computes as before it was wrapped. ``vector_cache`` stays."""
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()

    def __enter__(self) -> "ResidualUpdateModel":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
