"""``MaskLayer``: the shell shared by every strategy and layer type. It owns the base weight and
bias (shared, never copied), theta, a key and a few flags; every mask comes from the functional
core. A forward is a function of parameters, buffers and input (see :class:`MaskLayer`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

from .. import functional as F
from ..functional import random as nr
from ..functional._checks import ABLATIONS, RANDOM_ABLATIONS, check_bool, check_choice, check_key, in_transform
from ..functional.layer import apply_unit_masks, check_finite_tensor, noise_key, unit_masks
from ..functional.strategies import STRATEGIES
from ..functional.units import unit_shape
from ._layer_types import LayerType, UnsupportedLayerError
from ._v0 import V0Methods
from .cache import cache_lookup, cache_store, soft_lookup, soft_store

__all__ = ["MaskLayer"]


def _initial_key(key: torch.Tensor | int | None, device) -> torch.Tensor:
    """A layer's key: given, from a seed, or (like torch's own initialisers) from torch's global RNG."""
    if key is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        return nr.key(seed, device=device)
    if isinstance(key, int) and not isinstance(key, bool):
        return nr.key(key, device=device)
    return check_key(key).clone().to(device)


def _setting(attr: str, check, doc: str) -> property:
    """A property stored in ``attr`` whose setter validates with ``check`` (which returns the value)."""
    return property(lambda self: getattr(self, attr), lambda self, v: setattr(self, attr, check(v)), doc=doc)


def _applied(field: str, doc: str) -> property:
    return property(lambda self: None if self._last is None else getattr(self._last, field), doc=doc)


class MaskLayer(V0Methods, nn.Module):
    """Abstract masked layer (reference: ``NeuroSurgeon.Masking.mask_layer.MaskLayer``).

    Subclasses fix a strategy (``_strategy``, a row of
    :data:`neurosurgeon.functional.STRATEGIES`) and a base layer type (``_layer``).

    Args:
        ablation: ``none``; ``zero_ablate`` (mask 1 - h: the subnetwork removed);
            ``random_ablate`` (the subnetwork's weights re-initialised); ``randomly_sampled`` /
            ``complement_sampled`` (as many units as the subnetwork has removed, drawn from all
            units / from the units outside it). Ablations act on the hard mask h.
        mask_unit: ``weight``, ``neuron`` (one entry per output unit) or an einops pattern from
            the weight's axes to theta's, e.g. ``"(h d) i -> h"`` for attention heads.
        unit_sizes: sizes of the pattern's split axes, e.g. ``{"h": 12}``.
        mask_bias: also mask the bias (per element).
        key: PRNG key ``(2,)`` or int seed for this layer's random draws; default: drawn from
            torch's global RNG at construction, so ``torch.manual_seed`` makes it reproducible.

    Randomness: ablation draws come from ``mask_key`` (setting ``force_resample = True``
    moves it to ``fold_in(mask_key, 1)`` at the next eager forward, so new masks are drawn).
    Hard-concrete training noise of step s comes from ``fold_in(fold_in(mask_key, NOISE), s)``
    with s = ``noise_step``; each eager training forward (a checkpointed recompute redraws) advances s by one.
    Under ``torch.func`` transforms (``functional_call`` inside ``grad``/``vmap``/``jacrev``) and
    ``torch.compile`` a forward mutates nothing: the step stays where it is, so advance it
    yourself between compiled steps (``layer.noise_step += 1``, or pass ``noise_step`` to
    ``functional_call``), and a pending ``force_resample`` waits for the next eager forward.
    """

    _strategy: str = ""
    _layer: LayerType
    _extra_buffers = ("mask_key", "noise_step")

    def __init__(self, *, ablation: str, mask_unit: str, mask_bias: bool, layer_args: dict[str, Any],
                 unit_sizes: dict[str, int] | None = None, key=None, device=None, dtype=None,
                 base: nn.Module | None = None):
        super().__init__()
        self._ablation = check_choice("ablation", ablation, ABLATIONS)
        mask_bias = check_bool("mask_bias", mask_bias)
        self._use_masks = True
        self._force_resample, self._draws = False, 0  # _draws: resamples so far (a cached_masks() key)
        self._last: F.MaskedParameters | None = None  # what the last eager forward applied
        self._layer.configure(self, **layer_args)
        if base is None:
            w_shape, b_shape = self._layer.shapes(self)
            factory = dict(device=device, dtype=dtype)
            self.weight = nn.Parameter(torch.empty(w_shape, **factory))
            self.bias = nn.Parameter(torch.empty(b_shape, **factory)) if layer_args.get("bias", True) else None
            self._layer.reset(self)
        else:
            self.weight, self.bias = base.weight, base.bias
            if mask_bias and self.bias is None:
                warnings.warn(f"{type(base).__name__} has no bias; setting mask_bias=False", stacklevel=3)
                mask_bias = False
        if mask_bias and self.bias is None:
            raise ValueError("mask_bias=True needs a bias, but the layer was built with bias=False")
        (self._mask_unit, self._unit_sizes), self._mask_bias = self._checked_unit(mask_unit, unit_sizes), mask_bias
        self.register_buffer("mask_key", _initial_key(key, self.weight.device))
        self.register_buffer("noise_step", torch.zeros((), dtype=torch.int64, device=self.weight.device))
        self.reset_mask_parameters()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def _wrap(cls, layer: nn.Module, key=None, **mask_args):
        if not isinstance(layer, cls._layer.base):
            raise UnsupportedLayerError(f"{cls.__name__}.from_layer needs a {cls._layer.base.__name__}, got {type(layer).__name__}")
        if hasattr(layer.weight, "device_mesh"):  # theta would be a plain tensor beside a sharded weight
            raise ValueError(f"{type(layer).__name__} is already sharded (DTensor weight): inject masks first, then fully_shard")
        return cls(**cls._layer.config_from(layer), **mask_args, key=key, _base=layer)

    def _checked_unit(self, mask_unit, unit_sizes) -> tuple[str, dict[str, int] | None]:
        unit_shape(self.weight.shape, mask_unit, unit_sizes, kind=self._layer.kind)  # raises if they do not fit
        return mask_unit, None if unit_sizes is None else dict(unit_sizes)

    _row = property(lambda self: STRATEGIES[self._strategy])
    _settings = property(lambda s: (s._ablation, s._mask_unit, s._mask_bias, s._draws, tuple(sorted(s._hparams().items()))))

    def reset_mask_parameters(self) -> None:
        """(Re)create the mask parameters at their initial value."""
        self._make_weight_mask_params()
        self._make_bias_mask_params()

    def reset_parameters(self) -> None:
        """Re-initialise the base weight and bias as the base layer does, and the mask parameters."""
        self._layer.reset(self)
        self.reset_mask_parameters()

    def _init_hparams(self) -> dict[str, Any]:
        return {}

    def _new_mask_params(self, shape: tuple[int, ...]) -> nn.Parameter:
        # Half-precision weights get float32 theta: sigma(beta * theta) needs the range.
        dtype, value = torch.promote_types(self.weight.dtype, torch.float32), self._row.init(**self._init_hparams())
        return nn.Parameter(torch.full(shape, value, dtype=dtype, device=self.weight.device))

    def _make_weight_mask_params(self) -> None:
        shape = unit_shape(self.weight.shape, self._mask_unit, self._unit_sizes, kind=self._layer.kind)
        self.weight_mask_params = self._new_mask_params(shape)

    def _make_bias_mask_params(self) -> None:
        if self._mask_bias:
            self.bias_mask_params = self._new_mask_params(tuple(self.bias.shape))
        elif hasattr(self, "bias_mask_params"):  # as in 0.1.0: no attribute when the bias is not masked
            delattr(self, "bias_mask_params")

    # -- properties ----------------------------------------------------------------------
    ablation = _setting("_ablation", lambda v: check_choice("ablation", v, ABLATIONS), "The ablation mode (see the class docstring).")
    use_masks = _setting("_use_masks", lambda v: check_bool("use_masks", v), "Masks on (True) or the base layer as it is (False).")
    force_resample = _setting("_force_resample", lambda v: check_bool("force_resample", v),
                              "Set True to draw new random masks / replacement values at the next use; reads False after.")

    @property
    def mask_unit(self) -> str:
        return self._mask_unit

    @mask_unit.setter
    def mask_unit(self, value: str) -> None:
        unit, sizes = self._checked_unit(value, self._unit_sizes)
        if unit != self._mask_unit:  # the weight mask changes shape and starts again; a bias mask is kept
            self._mask_unit, self._unit_sizes = unit, sizes
            self._make_weight_mask_params()

    @property
    def unit_sizes(self) -> dict[str, int] | None:
        """Sizes of the mask-unit pattern's split axes (None for ``weight`` and ``neuron``)."""
        return None if self._unit_sizes is None else dict(self._unit_sizes)

    @property
    def mask_bias(self) -> bool:
        return self._mask_bias

    @mask_bias.setter
    def mask_bias(self, value: bool) -> None:
        value = check_bool("mask_bias", value)
        if value and self.bias is None:
            raise ValueError("mask_bias=True needs a bias, but this layer has none")
        if value != self._mask_bias:  # only the bias mask appears or goes: a learned weight mask is kept
            self._mask_bias = value
            self._make_bias_mask_params()

    weight_mask = _applied("weight_mask", "The weight mask applied by the last forward, broadcast to the weight's shape.")
    bias_mask = _applied("bias_mask", "The bias mask applied by the last forward (None when the bias is not masked).")

    @property
    def strategy(self) -> str:
        """``continuous_sparsification``, ``hard_concrete`` or ``magnitude_pruning`` (read-only)."""
        return self._strategy

    @property
    def layer_kind(self) -> str:
        """The wrapped layer type: ``linear``, ``gpt_conv1d``, ``conv1d`` or ``conv2d`` (read-only)."""
        return self._layer.kind

    @property
    def mask_hparams(self) -> dict[str, Any]:
        """The strategy's mask hyper-parameters as :func:`neurosurgeon.functional.mask_parameters` takes them."""
        return dict(self._hparams())

    def _hparams(self) -> dict[str, Any]:
        return {}

    def mask_tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weight, bias) mask inputs of the core: theta (magnitude pruning: the weight and bias themselves)."""
        return self.weight_mask_params, getattr(self, "bias_mask_params", None)

    def _is_hard(self) -> bool:
        return (not self.training) or (not self.weight_mask_params.requires_grad)

    def check_mask_params(self, label: str | None = None) -> None:
        """Raise ValueError if a mask parameter holds NaN or inf (a hard mask would silently
        binarise it), naming it ``<label>.weight_mask_params`` (default label: the class name)."""
        for name, p in zip(("weight_mask_params", "bias_mask_params"), self.mask_tensors() if self._row.has_params else ()):
            if p is not None:
                check_finite_tensor(p, f"{label or type(self).__name__}.{name}")

    # -- forward -----------------------------------------------------------------------------
    def _subnetworks(self, wp, bp) -> tuple:
        """Hard masks h of (weight, bias) already known, else None (computed by the core)."""
        return None, None

    def _unit_masks(self, hard: bool, tensors=None, step=None):
        key = ((self.mask_key if self._ablation in RANDOM_ABLATIONS else None) if hard  # ablation draws
               else noise_key(self.mask_key, self.noise_step if step is None else step) if self._row.needs_key else None)
        weight, bias, wp, bp = tensors or (self.weight, self.bias, *self.mask_tensors())
        return unit_masks(weight, bias, wp, bp, key, strategy=self._strategy, kind=self._layer.kind,
                          hard=hard, ablation=self._ablation, hparams=self._hparams(),
                          subnetworks=self._subnetworks(wp, bp) if hard else (None, None))

    def masked_parameters(self) -> F.MaskedParameters:
        """The effective weight and bias this layer computes with now, and the masks applied."""
        tracing = in_transform()
        if self._force_resample and not tracing:
            with torch.no_grad():
                self.mask_key.copy_(nr.fold_in(self.mask_key, 1))
            self._force_resample, self._draws = False, self._draws + 1
        if not self._use_masks:
            return F.MaskedParameters(self.weight, self.bias)
        hard = self._is_hard()
        settings = self._settings
        if hard and not tracing:
            cached = cache_lookup(self, settings)
            if cached is not None:
                return cached
        advances = not (tracing or hard) and self._row.needs_key
        # A forward inside backward is checkpointing's recompute: the first run's noise, no advance.
        redraw = advances and torch._C._current_graph_task_id() != -1
        step = self.noise_step - 1 if redraw else self.noise_step
        masks = self._unit_masks(hard, step=step)
        p = apply_unit_masks(self.weight, self.bias, masks, kind=self._layer.kind, mask_unit=self._mask_unit,
                             unit_sizes=self._unit_sizes)
        if not (hard or tracing) and torch.is_grad_enabled():  # this step's L0 may sum these masks
            soft_store(self, self.mask_tensors(), settings, masks)
        if not tracing:
            if advances and not redraw:  # an integer buffer: no autograd to keep out
                self.noise_step.add_(1)  # the next step draws fresh noise
            if hard and all(t is None or t.grad_fn is None for t in p):
                cache_store(self, settings, p)
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.masked_parameters()
        if not in_transform():  # a traced or wrapped tensor would be dead once the transform returns
            self._last = p
        return self._layer.forward(self, x, p.weight, p.bias)

    # -- L0 --------------------------------------------------------------------------------------
    def calculate_l0(self) -> torch.Tensor:
        """L0 of the current mask at the weight's size (+ bias): the strategy's soft L0 term
        while training (differentiable), the count of ones of the applied mask when hard."""
        hard = self._is_hard()
        tensors = (self.weight, self.bias, *self.mask_tensors())
        if hard:  # sharded (DTensor) masks are counted whole: sampled ablations draw over every unit
            tensors = tuple(t.full_tensor() if hasattr(t, "full_tensor") else t for t in tensors)
        masks = self._unit_masks(True, tensors) if hard else soft_lookup(self, tensors[2:], self._settings) or (None,) * 4
        total = None
        for params, base, applied in zip(tensors[2:], tensors[:2], masks[::2]):
            if params is not None:  # a sharded soft term is summed over ranks by the core
                term = F.mask_l0(self._strategy, params, base.numel(), hard=hard, applied_mask=applied, **self._hparams())
                total = term if total is None else total + term
        return total

    def calculate_max_l0(self) -> int:
        """Number of maskable entries: ``weight.numel()`` (+ ``bias.numel()`` if the bias is masked)."""
        return self.weight.numel() + (self.bias.numel() if self._mask_bias and self.bias is not None else 0)

    # -- modes, bake, state dict -------------------------------------------------------------------
    def train(self, mode: bool = True):
        """As ``nn.Module.train``; going to eval (hard masks) first checks theta for NaN/inf."""
        if not mode:
            self.check_mask_params()
        return super().train(mode)

    def bake(self) -> nn.Module:
        """A plain base layer with the current mode's masked weights baked in (detached copies)."""
        if self._is_hard():
            self.check_mask_params()
        with torch.no_grad():
            p = self.masked_parameters()
            w = p.weight.detach().clone()
            b = None if p.bias is None else p.bias.detach().clone()
        return self._layer.bake(self, w, b)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # State dicts written by NeuroSurgeon 0.1.0 carry no key or noise step: keep ours.
        for name in self._extra_buffers:
            state_dict.setdefault(prefix + name, getattr(self, name))
        # 0.1.0's conv layers also save their wrapped layer, whose weight/bias are the same
        # Parameters as ``weight``/``bias``: accept those duplicate keys and drop them.
        for name in ("weight", "bias"):
            dup = state_dict.pop(prefix + "_base_layer." + name, None)
            if dup is not None:
                state_dict.setdefault(prefix + name, dup)
        # All or nothing: with any shape mismatch, report every one and change no tensor
        # (torch alone would copy the matching entries before raising).
        mismatches = [
            f"size mismatch for {prefix}{name}: copying a param with shape {tuple(state_dict[prefix + name].shape)} "
            f"from checkpoint, the shape in current model is {tuple(t.shape)}."
            for name, t in (*self._parameters.items(), *self._buffers.items())
            if t is not None and isinstance(state_dict.get(prefix + name), torch.Tensor)
            and tuple(state_dict[prefix + name].shape) != tuple(t.shape)
        ]
        if mismatches:
            error_msgs.extend(mismatches)
            return
        if self._is_hard() and self._row.has_params:  # new parameters that will make a hard mask
            for name in ("weight_mask_params", "bias_mask_params"):
                if isinstance(state_dict.get(prefix + name), torch.Tensor):
                    check_finite_tensor(state_dict[prefix + name], f"{prefix or type(self).__name__ + '.'}{name}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def __getstate__(self):
        # The last forward's masks may be non-leaf tensors (training), which copy.deepcopy refuses.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_last": None}

    def extra_repr(self) -> str:
        cfg = ", ".join(f"{n}={getattr(self, n)}" for n in self._layer.config)
        sizes = f", unit_sizes={self._unit_sizes}" if self._unit_sizes else ""
        return (f"{cfg}, bias={self.bias is not None}, ablation={self._ablation!r}, mask_unit={self._mask_unit!r}"
                f"{sizes}, mask_bias={self._mask_bias}")
