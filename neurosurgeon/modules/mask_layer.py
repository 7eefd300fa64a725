"""``MaskLayer``: the stateful shell shared by every masking strategy and layer type.

It owns the base ``weight``/``bias`` (shared with the wrapped layer, never copied), the mask
parameters, a PRNG key buffer and a few flags. Every mask it applies comes from
:func:`neurosurgeon.functional.layer_masks`; this file holds no mask formula.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from .. import functional as F
from ..functional import random as nr
from ..functional._checks import (
    ABLATIONS,
    MASK_UNITS,
    RANDOM_ABLATIONS,
    check_bool,
    check_choice,
    check_key,
    check_temperature,
    transformed,
)
from ._layer_types import LayerType
from .cache import cache_generation
from .mask_parameter import MaskParameter, data_accesses

__all__ = ["MaskLayer", "TemperedMixin"]


def _initial_key(key: torch.Tensor | int | None, device) -> torch.Tensor:
    """A layer's key: given, from a seed, or (like torch's own initialisers) from torch's global RNG."""
    if key is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
        return nr.key(seed, device=device)
    if isinstance(key, int) and not isinstance(key, bool):
        return nr.key(key, device=device)
    return check_key(key).clone().to(device)


def _version(t: torch.Tensor | None):
    """What says a tensor is unchanged: identity, version counter, storage, and for a
    :class:`MaskParameter` its count of ``.data`` accesses (edits the version counter misses)."""
    return None if t is None else (id(t), t._version, data_accesses(t), t.data_ptr(), t.dtype, t.device)


class _Memo(NamedTuple):
    """A value derived from some tensors (and settings), served while they are unchanged. It
    keeps the tensors alive, so no other tensor can take their ids: equal stamps mean the same
    tensors, at the same versions."""

    stamp: tuple
    tensors: tuple
    value: Any

    @classmethod
    def of(cls, tensors: tuple, settings, value) -> "_Memo":
        return cls((*map(_version, tensors), settings), tensors, value)


def _recall(memo: _Memo | None, tensors: tuple, settings):
    """The memo's value if it was derived from ``tensors`` as they are now, with these settings; else None."""
    return memo.value if memo is not None and memo.stamp == (*map(_version, tensors), settings) else None


class MaskLayer(nn.Module):
    """Abstract masked layer (reference: ``NeuroSurgeon.Masking.mask_layer.MaskLayer``).

    Subclasses fix a strategy (``_strategy``) and a base layer type (``_layer``).

    Args:
        ablation: ``none``, ``zero_ablate``, ``random_ablate``, ``randomly_sampled`` or
            ``complement_sampled`` (SPEC section 3).
        mask_unit: ``weight`` or ``neuron``.
        mask_bias: also mask the bias (per element).
        key: PRNG key ``(2,)`` or int seed for this layer's random draws; default: drawn from
            torch's global RNG at construction, so ``torch.manual_seed`` makes it reproducible.
    """

    _strategy: str = ""
    _layer: LayerType
    _extra_buffers = ("mask_key", "noise_step")

    def __init__(
        self,
        *,
        ablation: str,
        mask_unit: str,
        mask_bias: bool,
        layer_args: dict[str, Any],
        key=None,
        device=None,
        dtype=None,
        base: nn.Module | None = None,
    ):
        super().__init__()
        self._ablation = check_choice("ablation", ablation, ABLATIONS)
        self._mask_unit = check_choice("mask_unit", mask_unit, MASK_UNITS)
        mask_bias = check_bool("mask_bias", mask_bias)
        self._use_masks = True
        self._force_resample = False
        self._last: F.MaskedParameters | None = None  # what the last forward applied
        self._drop_derived()
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
        self._mask_bias = mask_bias
        self.register_buffer("mask_key", _initial_key(key, self.weight.device))
        self.register_buffer("noise_step", torch.zeros((), dtype=torch.int64, device=self.weight.device))
        self.reset_mask_parameters()

    # -- construction ------------------------------------------------------------------
    @classmethod
    def _wrap(cls, layer: nn.Module, key=None, **mask_args):
        if not isinstance(layer, cls._layer.base):
            raise TypeError(f"{cls.__name__}.from_layer needs a {cls._layer.base.__name__}, got {type(layer).__name__}")
        args = cls._layer.config_from(layer)
        return cls(**args, **mask_args, key=key, _base=layer)

    def _mask_params_dtype(self) -> torch.dtype:
        # Half-precision weights get float32 mask parameters: sigma(beta * theta) needs the range.
        return torch.promote_types(self.weight.dtype, torch.float32)

    def reset_mask_parameters(self) -> None:
        """(Re)create the mask parameters at their initial value; drop cached masks."""
        self._drop_derived()
        self._make_mask_params()

    def reset_parameters(self) -> None:
        """Re-initialise the base weight and bias as the base layer does, and the mask parameters."""
        self._layer.reset(self)
        self.reset_mask_parameters()

    def _mask_init(self) -> float:
        """Initial value of every mask parameter (the strategy's init rule)."""
        raise NotImplementedError

    def _new_mask_params(self, shape: tuple[int, ...]) -> nn.Parameter:
        return MaskParameter(torch.full(shape, self._mask_init(), dtype=self._mask_params_dtype(), device=self.weight.device))

    def _make_mask_params(self) -> None:
        self._make_weight_mask_params()
        self._make_bias_mask_params()

    def _make_weight_mask_params(self) -> None:
        self.weight_mask_params = self._new_mask_params(
            F.mask_shape(self._layer.kind, tuple(self.weight.shape), self._mask_unit))

    def _make_bias_mask_params(self) -> None:
        self.bias_mask_params = self._new_mask_params(tuple(self.bias.shape)) if self._mask_bias else None

    # -- properties ----------------------------------------------------------------------
    @property
    def ablation(self) -> str:
        return self._ablation

    @ablation.setter
    def ablation(self, value: str) -> None:
        self._ablation = check_choice("ablation", value, ABLATIONS)

    @property
    def mask_unit(self) -> str:
        return self._mask_unit

    @mask_unit.setter
    def mask_unit(self, value: str) -> None:
        value = check_choice("mask_unit", value, MASK_UNITS)
        if value != self._mask_unit:
            # The weight mask changes shape and starts again; a learned bias mask is kept.
            self._mask_unit = value
            self._drop_derived()
            self._make_weight_mask_params()

    @property
    def mask_bias(self) -> bool:
        return self._mask_bias

    @mask_bias.setter
    def mask_bias(self, value: bool) -> None:
        value = check_bool("mask_bias", value)
        if value and self.bias is None:
            raise ValueError("mask_bias=True needs a bias, but this layer has none")
        if value != self._mask_bias:
            # Only the bias mask appears or goes: a learned weight mask is kept.
            self._mask_bias = value
            self._drop_derived()
            self._make_bias_mask_params()

    @property
    def use_masks(self) -> bool:
        return self._use_masks

    @use_masks.setter
    def use_masks(self, value: bool) -> None:
        self._use_masks = check_bool("use_masks", value)

    @property
    def force_resample(self) -> bool:
        """Set True to draw new random masks / replacement values at the next use; reads False after."""
        return self._force_resample

    @force_resample.setter
    def force_resample(self, value: bool) -> None:
        self._force_resample = check_bool("force_resample", value)

    @property
    def weight_mask(self) -> torch.Tensor | None:
        """The weight mask applied by the last forward, broadcast to the weight's shape."""
        return None if self._last is None else self._last.weight_mask

    @property
    def bias_mask(self) -> torch.Tensor | None:
        """The bias mask applied by the last forward (None when the bias is not masked)."""
        return None if self._last is None else self._last.bias_mask

    @property
    def strategy(self) -> str:
        """``continuous_sparsification``, ``hard_concrete`` or ``magnitude_pruning`` (read-only)."""
        return self._strategy

    @property
    def layer_kind(self) -> str:
        """The wrapped layer type as the functional core names it: ``linear``, ``gpt_conv1d``,
        ``conv1d`` or ``conv2d`` (read-only)."""
        return self._layer.kind

    @property
    def mask_hparams(self) -> dict[str, Any]:
        """The strategy's hyper-parameters as :func:`neurosurgeon.functional.layer_masks` takes them."""
        return dict(self._hparams())

    def mask_tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weight, bias) mask inputs of the functional core: theta, or for magnitude pruning the
        weight (and the bias when it is masked) itself; None where nothing is masked."""
        return self._mask_tensors()

    # -- strategy hooks -------------------------------------------------------------------
    def _mask_tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weight, bias) mask parameters as the functional core takes them."""
        return self.weight_mask_params, getattr(self, "bias_mask_params", None)

    def _hparams(self) -> dict[str, Any]:
        return {}

    def _is_hard(self) -> bool:
        wp, _ = self._mask_tensors()
        return (not self.training) or (not wp.requires_grad)

    # -- forward -----------------------------------------------------------------------------
    def _resample_if_requested(self) -> None:
        if self._force_resample:
            with torch.no_grad():
                self.mask_key.copy_(nr.fold_in(self.mask_key, 1))
            self._force_resample = False

    def _next_noise_key(self) -> torch.Tensor:
        """A fresh noise key per training step, reproducible from (key, step)."""
        key = F.noise_key(self.mask_key, self.noise_step)
        self.noise_step.add_(1)
        return key

    def check_mask_params(self, label: str | None = None) -> None:
        """Raise ValueError if a mask parameter holds NaN or inf (a hard mask would silently
        binarise it), naming it ``<label>.weight_mask_params`` (default label: the class name).
        Magnitude pruning has none of its own: its mask is computed from the weight."""
        wp, bp = self._mask_tensors()
        for name, p in (("weight_mask_params", wp), ("bias_mask_params", bp)):
            if p is not None and p is not self.weight and p is not self.bias:
                F.check_finite_params(p, f"{label or type(self).__name__}.{name}")

    def _masks(self, hard: bool) -> F.LayerMasks:
        wp, bp = self._mask_tensors()
        if hard:
            key = self.mask_key if self._ablation in RANDOM_ABLATIONS else None
        elif self._strategy == "hard_concrete":
            key = self._next_noise_key()
        else:
            key = None
        # check_finite=False: hard parameters are checked below, once per version, with our name.
        kwargs = dict(strategy=self._strategy, kind=self._layer.kind, hard=hard, ablation=self._ablation,
                      check_finite=False, **self._hparams())
        if not hard:
            return F.layer_masks(self.weight, self.bias, wp, bp, key, **kwargs)
        if self._transformed():
            return F.layer_masks(self.weight, self.bias, wp, bp, key, **kwargs)
        # Validate once per version of the parameters (reading a value costs a device sync).
        versions = (_version(wp), _version(bp))
        if versions != self._checked:
            self.check_mask_params()
            self._checked = versions
        h_args = {n: v for n, v in kwargs.items() if n in ("left", "right", "prune_percentage")}
        hs = self._subnetworks(wp, bp, h_args)
        if self._ablation not in RANDOM_ABLATIONS:
            return F.layer_masks(self.weight, self.bias, wp, bp, key, subnetworks=hs, **kwargs)
        # Random ablations are drawn once and reused while the subnetwork h, the key and the
        # settings are unchanged. h is the same object when ``_subnetworks`` reused it (theta's
        # version and ``.data`` count, and h's own version, unchanged); a recomputed h (a plain
        # theta, magnitude pruning) is compared by value, so a stale draw is never served.
        stamp = (tuple(sorted(kwargs.items())), tuple(self.mask_key.tolist()),
                 *((None,) * 3 if t is None else (tuple(t.shape), t.dtype, t.device) for t in (self.weight, self.bias)),
                 *((None,) * 3 if t is None else (tuple(t.shape), t.dtype, t.device) for t in hs))
        if self._cache is not None and self._cache[0] == stamp and all(
            a is None or a is b or torch.equal(a, b) for a, b in zip(hs, self._cache[1])
        ):
            return self._cache[2]
        masks = F.layer_masks(self.weight, self.bias, wp, bp, key, subnetworks=hs, **kwargs)
        self._cache = (stamp, hs, masks)
        return masks

    def _subnetworks(self, wp: torch.Tensor | None, bp: torch.Tensor | None, h_args: dict) -> tuple:
        """The hard subnetworks h of (weight, bias) in an eager hard forward, reused while theta
        and the settings are unchanged. Only theta held in :class:`MaskParameter` qualifies:
        its ``.data`` edits are counted (a plain tensor's are invisible, so it is recomputed).
        The entry holds theta and h themselves, so their ids cannot be reused, and h's own
        version: an in-place edit of a returned mask (``layer.weight_mask``) is seen too."""
        settings = tuple(sorted(h_args.items()))
        last = None if self._h is None else self._h.value
        hs = _recall(self._h, (wp, bp, *(last or (None, None))), settings)  # h's own versions included
        if hs is not None:
            return hs
        hs = tuple(None if t is None else F.hard_mask(self._strategy, t, **h_args) for t in (wp, bp))
        cacheable = all(t is None or data_accesses(t) is not None for t in (wp, bp))
        self._h = _Memo.of((wp, bp, *hs), settings, hs) if cacheable else None
        return hs

    def masked_parameters(self) -> F.MaskedParameters:
        """The effective weight and bias this layer computes with now (and the masks applied)."""
        self._resample_if_requested()
        if not self._use_masks:
            return F.MaskedParameters(self.weight, self.bias, None, None)
        hard = self._is_hard()
        generation = cache_generation() if hard else None
        if generation is None or self._transformed():
            return F.apply_layer_masks(self.weight, self.bias, self._masks(hard))
        tensors = (*self._mask_tensors(), self.weight, self.bias, self.mask_key)
        settings = (generation, self._ablation, self._mask_unit, self._mask_bias, tuple(sorted(self._hparams().items())))
        p = _recall(self._eff, tensors, settings)
        if p is not None:
            return p
        p = F.apply_layer_masks(self.weight, self.bias, self._masks(hard))
        graph = any(t is not None and t.grad_fn is not None for t in p)
        self._eff = None if graph else _Memo.of(tensors, settings, p)
        return p

    def _soft_bias(self, bias_params: torch.Tensor | None, key: torch.Tensor | None):
        """(bias, bias_mask) of a training forward that computed the weight outside
        :func:`~neurosurgeon.functional.layer_masks` (the strategies' fused paths)."""
        if bias_params is None:
            return self.bias, None
        m = F.soft_mask(self._strategy, bias_params, key, **self._hparams())
        return F.apply_mask(self.bias, m), m.to(self.bias.dtype)

    def _transformed(self) -> bool:
        """Inside torch.compile or a functorch transform (vmap, grad, functional_call batching)."""
        return transformed(*self._mask_tensors(), self.weight, self.mask_key)

    def _trains_weight_mask_eagerly(self) -> bool:
        """A training forward of a weight-unit mask on eager tensors with autograd on: where the
        strategies' fused training paths (CS: one sigmoid for mask and L0; HC: the compiled
        gate) apply. Anything else goes through :func:`~neurosurgeon.functional.layer_masks`."""
        wp, _ = self._mask_tensors()
        return (self._use_masks and self._ablation == "none" and not self._is_hard() and torch.is_grad_enabled()
                and wp.shape == self.weight.shape and not self._transformed())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._is_hard():
            # Training: what eval forwards cached (h, random draws, effective weights) would
            # only hold memory through the training steps; it is recomputed when next needed.
            for name in self._EVAL_DERIVED:
                setattr(self, name, None)
        p = self.masked_parameters()
        # Keep the applied masks for ``weight_mask``/``bias_mask``, but never a traced value or
        # a functorch wrapper, which would be dead (or leak) once the transform returns.
        if not transformed(p.weight):
            self._last = p
        return self._layer.forward(self, x, p.weight, p.bias)

    # -- L0 --------------------------------------------------------------------------------------
    def calculate_l0(self) -> torch.Tensor:
        """L0 of the current mask at the weight's size (+ bias): soft surrogate while training,
        count of ones while hard. A 0-d tensor, differentiable while soft.

        While training, the weight term is the one the last forward's fused path computed
        (:meth:`_remember_l0`), as long as theta (same tensor, same version) and the
        hyper-parameters are unchanged; otherwise it is computed afresh."""
        hard = self._is_hard()
        wp, bp = self._mask_tensors()
        total = None if hard or self._transformed() else _recall(self._l0, (wp,), self._l0_settings())
        masks = self._masks(hard) if hard else None
        hp = self._hparams()
        if total is None:
            total = F.mask_l0(self._strategy, wp, self.weight.numel(), hard=hard,
                              applied_mask=None if masks is None else masks.weight_mask, **hp)
        if self._mask_bias and bp is not None:
            total = total + F.mask_l0(self._strategy, bp, self.bias.numel(), hard=hard,
                                      applied_mask=None if masks is None else masks.bias_mask, **hp)
        return total

    def _l0_settings(self):
        return (tuple(sorted(self._hparams().items())), self.weight.numel(), torch.is_grad_enabled())

    def _remember_l0(self, weight_params: torch.Tensor, l0: torch.Tensor) -> None:
        """Keep a training forward's weight L0 term (the strategies' fused paths compute it with
        the mask) for :meth:`calculate_l0`: the penalty then costs no second pass over theta."""
        self._l0 = _Memo.of((weight_params,), self._l0_settings(), l0)

    def calculate_max_l0(self) -> int:
        """Number of maskable entries: ``weight.numel()`` (+ ``bias.numel()`` if the bias is masked)."""
        return self.weight.numel() + (self.bias.numel() if self._mask_bias and self.bias is not None else 0)

    # -- bake, state dict ----------------------------------------------------------------------
    def bake(self) -> nn.Module:
        """A plain base layer (``nn.Linear``, ``Conv1D``, ``nn.Conv1d/2d``) with the masked weights
        of the current mode baked in (detached copies)."""
        with torch.no_grad():
            p = self.masked_parameters()
            w = p.weight.detach().clone()
            b = None if p.bias is None else p.bias.detach().clone()
        return self._layer.bake(self, w, b)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # State dicts written by NeuroSurgeon 0.1.0 carry no key or noise counter: keep ours.
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
        thetas = {name: self._parameters.get(name) for name in ("weight_mask_params", "bias_mask_params")}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        # assign=True installs the checkpoint's tensors as plain Parameters; theta must stay a
        # MaskParameter (same storage) or its hard mask and L0 term could never be cached again.
        # Only a Parameter this load installed is rewrapped: one already held (maybe by an
        # optimizer) keeps its identity.
        for name, before in thetas.items():
            t = self._parameters.get(name)
            if t is not None and t is not before and not isinstance(t, MaskParameter):
                self._parameters[name] = MaskParameter(t.detach(), t.requires_grad)
        self._drop_derived()

    # Values derived from the parameters and settings, recomputed on demand:
    #   _h: _Memo of the last eager hard forward's masks h (from theta, and h's own versions)
    #   _cache: (settings, hard masks h, masks) of a random ablation's draw
    #   _checked: versions of the mask parameters last checked for NaN/inf
    #   _eff: _Memo of the effective parameters under cached_masks()
    #   _l0: _Memo of the last fused training forward's weight L0 term (CS and HC)
    #   _thresholds: magnitude pruning's last certifying thresholds
    _DERIVED = ("_h", "_cache", "_checked", "_eff", "_l0", "_thresholds")
    _EVAL_DERIVED = ("_h", "_cache", "_eff")  # used by hard forwards only

    def _drop_derived(self) -> None:
        for name in self._DERIVED:
            setattr(self, name, None)

    def __getstate__(self):
        # The last forward's masks may be non-leaf tensors (training), which copy.deepcopy
        # refuses; they and the derived values are recomputed at the next forward.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, **dict.fromkeys(("_last", *self._DERIVED))}

    def extra_repr(self) -> str:
        cfg = ", ".join(f"{n}={getattr(self, n)}" for n in self._layer.config)
        return f"{cfg}, bias={self.bias is not None}, ablation={self._ablation!r}, mask_unit={self._mask_unit!r}, mask_bias={self._mask_bias}"


class TemperedMixin:
    """The ``temperature`` property of the strategies with one: beta in sigma(beta * theta)
    (continuous sparsification) or of the concrete distribution (hard concrete)."""

    _temperature: float

    @property
    def temperature(self) -> float:
        """The temperature beta; setting it validates (finite, > 0) and changes nothing else."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(value)
