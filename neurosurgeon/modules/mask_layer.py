"""``MaskLayer``: the shell shared by every strategy and layer type. It owns the base weight and
bias (shared, never copied), theta, a key and its settings, checked once (at construction or in a
setter) into the :class:`~neurosurgeon.functional.layer.LayerSettings` every forward hands to the
functional core. A forward is a function of parameters, buffers and input.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

from ..functional import random as nr
from ..functional._checks import check_bool, check_key, in_transform
from ..functional.ablation import ABLATION_ROWS
from ..functional.layer import (
    LayerSettings,
    MaskedParameters,
    apply_unit_masks,
    check_finite_tensor,
    elementwise_unit,
    l0_term,
    layer_settings,
    noise_key,
    unit_masks,
)
from ..functional.strategies import STRATEGIES, Strategy
from ._checkpoint import Checkpointed
from ._layer_types import LayerType
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


def _flag(attr: str, doc: str) -> property:
    """A bool setting stored in ``attr``, checked when set."""
    return property(lambda self: getattr(self, attr), lambda self, v: setattr(self, attr, check_bool(attr[1:], v)), doc=doc)


def _applied(field: str, doc: str) -> property:
    return property(lambda self: None if self._last is None else getattr(self._last, field), doc=doc)


class MaskLayer(Checkpointed, V0Methods, nn.Module):
    """Abstract masked layer (reference: ``NeuroSurgeon.Masking.mask_layer.MaskLayer``).

    The concrete classes (``ContSparseLinear``, ``HardConcreteConv2d``, ...) are derived from
    the strategy table and the layer-kind table (:mod:`neurosurgeon.modules.shells`): a class
    fixes a strategy (``_strategy``, a row of :data:`neurosurgeon.functional.STRATEGIES`) and a
    base layer type (``_layer``).

    Args:
        ablation: a row of :data:`neurosurgeon.functional.ABLATIONS`, acting on the hard mask h:
            ``none``, ``zero_ablate``, ``random_ablate``, ``randomly_sampled``, ``complement_sampled``.
        mask_unit: ``weight``, ``neuron`` (one entry per output unit) or an einops pattern from
            the weight's axes to theta's, e.g. ``"(h d) i -> h"`` for attention heads.
        unit_sizes: sizes of the pattern's split axes, e.g. ``{"h": 12}``.
        mask_bias: also mask the bias (per element).
        key: PRNG key ``(2,)`` or int seed for this layer's random draws; default: drawn from
            torch's global RNG at construction, so ``torch.manual_seed`` makes it reproducible.
        **hparams: the strategy's hyper-parameters (``STRATEGIES[strategy].hparams``), each also
            a property that validates when set.

    Randomness: ablation draws come from ``mask_key`` (``force_resample = True`` moves it to
    ``fold_in(mask_key, 1)`` at the next eager forward). Hard-concrete noise of step s comes from
    ``fold_in(fold_in(mask_key, NOISE), s)``, s = ``noise_step``, advanced by each eager training
    forward (a checkpointed recompute redraws). Under ``torch.func`` transforms and ``torch.compile``
    a forward mutates nothing: advance the step yourself between compiled steps
    (``layer.noise_step += 1``), and a pending ``force_resample`` waits for the next eager forward.
    """

    _strategy: str = ""
    _layer: LayerType
    _extra_buffers = ("mask_key", "noise_step")

    def __init__(self, *, ablation: str = "none", mask_unit: str | None = None, mask_bias: bool = False,
                 layer_args: dict[str, Any], unit_sizes: dict[str, int] | None = None, key=None, device=None,
                 dtype=None, base: nn.Module | None = None, **hparams: Any):
        super().__init__()
        mask_unit = self._row.default_unit if mask_unit is None else mask_unit
        mask_bias = check_bool("mask_bias", mask_bias)
        self._layer.configure(self, **layer_args)
        self._use_masks = True
        self._force_resample, self._draws = False, 0  # _draws: resamples so far (a cached_masks() key)
        self._last: MaskedParameters | None = None  # what the last eager forward applied
        self._hints = (None, None)  # what a strategy's hinted hard mask returned last (magnitude's threshold)
        self.label = type(self).__name__  # how errors name this layer; inject_masks sets its module path
        self._unit_sizes = None if unit_sizes is None else dict(unit_sizes)
        self._settings_ = layer_settings(self._strategy, self._layer.kind, self._layer.shapes(self)[0],
                                         mask_unit=mask_unit, unit_sizes=unit_sizes, ablation=ablation, **hparams)
        if base is None:
            w_shape, b_shape = self._layer.shapes(self)
            factory = dict(device=device, dtype=dtype)
            self.weight = nn.Parameter(torch.empty(w_shape, **factory))
            self.bias = nn.Parameter(torch.empty(b_shape, **factory)) if layer_args.get("bias", self._layer.bias) else None
            self._layer.reset(self)
        else:
            self.weight, self.bias = base.weight, getattr(base, "bias", None)
            if mask_bias and self.bias is None:
                warnings.warn(f"{type(base).__name__} has no bias; setting mask_bias=False", stacklevel=4)
                mask_bias = False
        if mask_bias and self.bias is None:
            raise ValueError("mask_bias=True needs a bias, but the layer was built with bias=False")
        self._mask_bias = mask_bias
        self.register_buffer("mask_key", _initial_key(key, self.weight.device))
        self.register_buffer("noise_step", torch.zeros((), dtype=torch.int64, device=self.weight.device))
        self.reset_mask_parameters()

    _row: Strategy = property(lambda self: STRATEGIES[self._strategy])

    def _settle(self, **changes: Any) -> None:
        """Check the settings with ``changes`` applied (a setter's new value); on success keep them."""
        s = self._settings_
        args = dict(mask_unit=s.unit.name, unit_sizes=self.unit_sizes, ablation=s.ablation, **s.hparams)
        self._settings_ = layer_settings(self._strategy, self._layer.kind, tuple(self.weight.shape),
                                         **{**args, **changes})

    @property
    def _cache_key(self) -> tuple:
        """What a cached mask depends on besides the tensors (a ``cached_masks()`` key)."""
        s = self._settings_
        return (s.ablation, s.unit, self._mask_bias, self._draws, tuple(sorted(s.hparams.items())))

    def reset_mask_parameters(self) -> None:
        """(Re)create the mask parameters at their initial value."""
        self._make_weight_mask_params()
        self._make_bias_mask_params()

    def reset_parameters(self) -> None:
        """Re-initialise the base weight and bias as the base layer does, and the mask parameters."""
        self._layer.reset(self)
        self.reset_mask_parameters()

    def _new_mask_params(self, shape: tuple[int, ...]) -> nn.Parameter:
        # Half-precision weights get float32 theta: sigma(beta * theta) needs the range.
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        value = self._row.init(unit=self._settings_.unit, **self._settings_.hparams)
        return nn.Parameter(torch.full(shape, value, dtype=dtype, device=self.weight.device))

    def _make_weight_mask_params(self) -> None:
        self._hints = (None, None)
        if self._row.has_params:
            self.weight_mask_params = self._new_mask_params(self._settings_.unit.shape)

    def _make_bias_mask_params(self) -> None:
        if self._mask_bias and self._row.has_params:
            self.bias_mask_params = self._new_mask_params(tuple(self.bias.shape))
        elif hasattr(self, "bias_mask_params"):  # as in 0.1.0: no attribute when the bias is not masked
            delattr(self, "bias_mask_params")

    # -- properties ----------------------------------------------------------------------
    @property
    def ablation(self) -> str:
        """The ablation mode (see the class docstring)."""
        return self._settings_.ablation

    @ablation.setter
    def ablation(self, value: str) -> None:
        self._settle(ablation=value)

    use_masks = _flag("_use_masks", "Masks on (True) or the base layer as it is (False).")
    force_resample = _flag("_force_resample", "Set True to draw new random masks / replacement values at the next "
                                              "use; reads False after.")

    @property
    def mask_unit(self) -> str:
        return self._settings_.unit.name

    @mask_unit.setter
    def mask_unit(self, value: str) -> None:
        before = self._settings_.unit
        self._settle(mask_unit=value)
        if self._settings_.unit != before:  # the weight mask changes shape and starts again; a bias mask is kept
            self._make_weight_mask_params()

    @property
    def unit_sizes(self) -> dict[str, int] | None:
        """Sizes of the mask-unit pattern's split axes as given (None for ``weight`` and ``neuron``)."""
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
        """The strategy: a row of :data:`neurosurgeon.functional.STRATEGIES` (read-only)."""
        return self._strategy

    @property
    def layer_kind(self) -> str:
        """The wrapped layer type: a row of :data:`neurosurgeon.functional.KINDS` (read-only)."""
        return self._layer.kind

    @property
    def mask_hparams(self) -> dict[str, Any]:
        """The strategy's hyper-parameters as :func:`neurosurgeon.functional.mask_parameters` takes them."""
        return dict(self._settings_.hparams)

    @property
    def settings(self) -> LayerSettings:
        """The checked settings every forward hands to the functional core."""
        return self._settings_

    def mask_tensors(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weight, bias) mask inputs of the core: theta (magnitude pruning: the weight and bias themselves)."""
        if not self._row.has_params:
            return self.weight, (self.bias if self._mask_bias else None)
        return self.weight_mask_params, getattr(self, "bias_mask_params", None)

    def _is_hard(self) -> bool:
        return not self._row.has_params or not self.training or not self.weight_mask_params.requires_grad

    def check_mask_params(self, label: str | None = None) -> None:
        """Raise ValueError if a mask parameter holds NaN or inf (a hard mask would silently
        binarise it), naming it ``<label>.weight_mask_params`` (default label: the class name)."""
        for name, p in zip(("weight_mask_params", "bias_mask_params"), self.mask_tensors() if self._row.has_params else ()):
            if p is not None:
                check_finite_tensor(p, f"{label or type(self).__name__}.{name}")

    # -- forward -----------------------------------------------------------------------------
    def _subnetworks(self, wp, bp) -> tuple:
        """Hard masks h of (weight, bias) from a strategy's hinted path (the same h, faster given
        the last call's hint; a hint certifies itself, so an edited tensor never gets a stale
        mask), else None (computed by the core). Under transforms nothing is kept."""
        hinted = self._row.hinted_hard
        if hinted is None:
            return None, None
        s = self._settings_
        out = [hinted(t, hint, unit=s.unit, **s.hparams) if t is not None else (None, None)
               for t, hint in zip((wp, bp), self._hints)]
        if not in_transform():
            self._hints = tuple(hint for _, hint in out)
        return tuple(h for h, _ in out)

    def _unit_masks(self, hard: bool, tensors=None, step=None):
        s = self._settings_
        key = ((self.mask_key if ABLATION_ROWS[s.ablation].random else None) if hard  # ablation draws
               else noise_key(self.mask_key, self.noise_step if step is None else step) if self._row.needs_key else None)
        weight, bias, wp, bp = tensors or (self.weight, self.bias, *self.mask_tensors())
        return unit_masks(weight, bias, wp, bp, key, s, hard=hard,
                          subnetworks=self._subnetworks(wp, bp) if hard else (None, None))

    def _named_errors(self, hard: bool, step):
        """The core's masks; an error (an impossible sampled ablation, say) names this layer."""
        try:
            return self._unit_masks(hard, step=step)
        except ValueError as e:
            raise ValueError(f"{self.label} ({type(self).__name__}, weight {tuple(self.weight.shape)}): {e}") from e

    def masked_parameters(self) -> MaskedParameters:
        """The effective weight and bias this layer computes with now, and the masks applied."""
        tracing = in_transform()
        if self._force_resample and not tracing:
            with torch.no_grad():
                self.mask_key.copy_(nr.fold_in(self.mask_key, 1))
            self._force_resample, self._draws = False, self._draws + 1
        if not self._use_masks:
            return MaskedParameters(self.weight, self.bias)
        hard = self._is_hard()
        settings = self._cache_key
        if hard and not tracing:
            cached = cache_lookup(self, settings)
            if cached is not None:
                return cached
        advances = not (tracing or hard) and self._row.needs_key
        # A forward inside backward is checkpointing's recompute: the first run's noise, no advance.
        redraw = advances and torch._C._current_graph_task_id() != -1
        step = self.noise_step - 1 if redraw else self.noise_step
        # Traced code keeps no try block: it is the same call, and errors surface eagerly first.
        masks = self._unit_masks(hard, step=step) if tracing else self._named_errors(hard, step)
        p = apply_unit_masks(self.weight, self.bias, masks, self._settings_.unit)
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
        s = self._settings_
        tensors = (self.weight, self.bias, *self.mask_tensors())
        if hard:  # sharded (DTensor) masks are counted whole: sampled ablations draw over every unit
            tensors = tuple(t.full_tensor() if hasattr(t, "full_tensor") else t for t in tensors)
        masks = self._unit_masks(True, tensors) if hard else soft_lookup(self, tensors[2:], self._cache_key) or (None,) * 4
        total = None
        for params, base, applied in zip(tensors[2:], tensors[:2], masks[::2]):
            if params is not None:  # a sharded soft term is summed over ranks by the core
                unit = s.unit if params is tensors[2] else elementwise_unit(params.shape)
                term = l0_term(self._row, params, base.numel(), hard=hard, applied_mask=applied, unit=unit,
                               hparams=s.hparams)
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

    def extra_repr(self) -> str:
        cfg = ", ".join(f"{n}={getattr(self, n)}" for n in self._layer.config)
        sizes = f", unit_sizes={self._unit_sizes}" if self._unit_sizes else ""
        return (f"{cfg}, bias={self.bias is not None}, ablation={self.ablation!r}, mask_unit={self.mask_unit!r}"
                f"{sizes}, mask_bias={self._mask_bias}")
