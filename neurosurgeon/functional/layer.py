"""One masked layer as a pure function: (weight, bias, theta, key, settings) -> what it computes with.

Every shell (the layers, the model-level functional path, research code) goes through
:func:`unit_masks` and :func:`apply_unit_masks`, so the composition of strategy, unit and
ablation is written once. Strings (strategy, kind, unit, ablation) are checked once, into a
:class:`LayerSettings`, by :func:`layer_settings`; the kernels only read the tables.

Keys: a layer's key is split four ways, ``split(key, 4)`` = (weight draw, bias draw, weight
replacement, bias replacement). A draw is a sampled ablation's mask or the hard-concrete noise;
a replacement is ``random_ablate``'s fresh values. A hard-concrete training forward draws its
noise from the key it is given; the layers pass ``noise_key(layer_key, step)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from . import random as nr
from ._checks import check_bool, check_broadcasts_to, check_same_shape, check_tensor, concrete_int
from .ablation import ABLATION_ROWS, ablation_row
from .kinds import KINDS, fan_in, kind_row
from .reinit import INITS
from .strategies import STRATEGIES, Strategy, check_unit, resolve_hparams, strategy_row
from .units import MaskUnit, expand, resolve_unit

__all__ = ["MaskedParameters", "LayerSettings", "layer_settings", "mask_parameters", "hard_mask", "mask_l0",
           "noise_key", "NOISE_STREAM"]

#: fold_in tag that separates a layer's training-noise stream from its ablation draws.
NOISE_STREAM = 0x6E6F6973


def noise_key(key: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Key of the hard-concrete noise of training step ``step``: fold_in(fold_in(key, NOISE_STREAM), step)."""
    return nr.fold_in(nr.fold_in(key, NOISE_STREAM), step)


@dataclasses.dataclass(frozen=True)
class MaskedParameters:
    """What a masked layer computes with: the effective weight and bias, and the masks applied
    (broadcast to the parameter's shape; None where nothing was masked). The per-unit mask of
    ``weight_mask`` is :func:`~neurosurgeon.functional.reduce_mask` of it.

    A registered pytree whose leaves are the tensors present, so ``torch.func.vmap`` can return it.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    weight_mask: torch.Tensor | None = None
    bias_mask: torch.Tensor | None = None

    def __iter__(self):
        return iter((self.weight, self.bias, self.weight_mask, self.bias_mask))


def _flatten(p: MaskedParameters):
    values = tuple(p)
    return [v for v in values if v is not None], tuple(v is not None for v in values)


def _unflatten(children, present):
    it = iter(children)
    return MaskedParameters(*(next(it) if here else None for here in present))


pytree.register_pytree_node(
    MaskedParameters, _flatten, _unflatten,
    serialized_type_name="neurosurgeon.functional.MaskedParameters",
    flatten_with_keys_fn=lambda p: ([(pytree.GetAttrKey(f.name), v) for f, v in zip(dataclasses.fields(p), p)
                                     if v is not None], tuple(v is not None for v in p)),
)


class LayerMasks(NamedTuple):
    """The masks one layer applies, at unit shape, and ``random_ablate``'s replacement values
    (parameter-shaped); None where nothing is masked or replaced."""

    weight_mask: torch.Tensor | None
    weight_replacement: torch.Tensor | None
    bias_mask: torch.Tensor | None
    bias_replacement: torch.Tensor | None


class LayerSettings(NamedTuple):
    """A masked layer's settings, checked once (:func:`layer_settings`): what the kernels read.

    ``strategy``, ``kind`` and ``ablation`` are keys of their tables; ``unit`` is the weight's
    mask unit resolved against its shape; ``hparams`` every hyper-parameter of the strategy.
    """

    strategy: str
    kind: str
    unit: MaskUnit
    ablation: str
    hparams: Mapping[str, Any]

    @property
    def row(self) -> Strategy:
        return STRATEGIES[self.strategy]


def elementwise_unit(shape) -> MaskUnit:
    """The unit of a tensor masked entry by entry (a bias, or theta given without its weight)."""
    shape = tuple(int(s) for s in shape)
    names = tuple(f"a{i}" for i in range(len(shape)))
    axes = " ".join(names)
    return MaskUnit("weight", f"{axes} -> {axes}", tuple(zip(names, shape)), shape, shape, True)


def layer_settings(strategy: str, kind: str, weight_shape, *, mask_unit: str = "weight",
                   unit_sizes: Mapping[str, int] | None = None, ablation: str = "none",
                   **hparams: Any) -> LayerSettings:
    """Check a masked layer's settings once, against its weight's shape.

    Raises:
        ValueError / TypeError: naming the argument, the value and what is allowed: an unknown
            strategy, kind or ablation; a unit the strategy does not support; a pattern that does
            not fit the weight (naming the pattern, the shape and why); a bad hyper-parameter.
    """
    kind_row(kind)
    ablation_row(ablation)
    check_unit(strategy, mask_unit)
    unit = resolve_unit(kind, weight_shape, mask_unit, unit_sizes)
    return LayerSettings(strategy, kind, unit, ablation, resolve_hparams(strategy, hparams))


def check_finite_tensor(params: torch.Tensor, name: str) -> None:
    """Raise if mask parameters hold NaN/inf, rather than silently binarising them to 0.
    Skipped where reading a value would break a transform."""
    n_bad = concrete_int((~torch.isfinite(params)).sum())
    if n_bad:
        raise ValueError(f"{name} holds {n_bad} non-finite value(s) (NaN or inf); cannot make a hard mask from them")


def hard_mask(strategy: str, params: torch.Tensor, *, unit: MaskUnit | None = None, **hparams: Any) -> torch.Tensor:
    """The subnetwork h (binary, params' shape and dtype) a strategy's parameters describe.

    ``params`` is theta, or for magnitude pruning the weight itself; ``unit`` defaults to one
    entry per element of ``params``.

    Example:
        >>> hard_mask("hard_concrete", torch.tensor([0.0, -1e-17, 1e-9, 5e-3]))
        tensor([0., 0., 1., 1.])
    """
    hp = resolve_hparams(strategy, hparams)
    return strategy_row(strategy).hard(params, unit=unit or elementwise_unit(params.shape), **hp)


def mask_l0(strategy: str, params: torch.Tensor, param_numel: int, *, hard: bool,
            applied_mask: torch.Tensor | None = None, unit: MaskUnit | None = None, **hparams: Any) -> torch.Tensor:
    """L0 of one masked tensor, counted at the parameter's size (a unit counts once per weight it gates).

    Soft: the strategy's L0 term (continuous sparsification's sum of sigma(beta theta), hard
    concrete's expected L0 of eq. 12); where that term is the soft mask's sum, ``applied_mask``
    (the soft mask a forward made from ``params``, at their shape) is summed instead of computed
    again. Hard: the ones of ``applied_mask`` (default: h).

    Example:
        >>> mask_l0("continuous_sparsification", torch.zeros(3, 1), 12, hard=False).item()
        6.0
    """
    return l0_term(strategy_row(strategy), params, param_numel, hard=check_bool("hard", hard), applied_mask=applied_mask,
                   unit=unit or elementwise_unit(params.shape), hparams=resolve_hparams(strategy, hparams))


def l0_term(row: Strategy, params: torch.Tensor, param_numel: int, *, hard: bool, applied_mask: torch.Tensor | None,
            unit: MaskUnit, hparams: Mapping[str, Any]) -> torch.Tensor:
    """:func:`mask_l0`'s kernel: every argument checked already."""
    hp = hparams
    scale = param_numel // max(params.numel(), 1)
    if hard or row.l0 is None:
        m = applied_mask if applied_mask is not None else row.hard(params, unit=unit, **hp)
        # Counted in int64 (a half-precision sum is inexact above 256), reported as a float.
        return ((m != 0).sum() * scale).to(torch.promote_types(params.dtype, torch.float32))
    if hasattr(params, "to_local"):  # a sharded theta (DTensor): each rank sums its own shard's terms
        return _sum_over_shards(row.l0(params.to_local(), unit=unit, **hp) * scale, params)
    if applied_mask is not None and row.l0_is_mask_sum:
        if tuple(applied_mask.shape) != tuple(params.shape):
            raise ValueError(f"applied_mask of shape {tuple(applied_mask.shape)} must have params' shape {tuple(params.shape)}")
        return applied_mask.sum() * scale
    return row.l0(params, unit=unit, **hp) * scale


def _sum_over_shards(local: torch.Tensor, sharded: torch.Tensor) -> torch.Tensor:
    """The sum of ``local`` over the mesh dimensions ``sharded`` is split along, as a plain
    tensor whose gradient is ``local``'s own: each rank's loss adds the whole L0 term, so each
    shard of theta gets exactly the gradient it has in the unsharded model."""
    import torch.distributed as dist

    total = local.detach().clone()
    for dim, placement in enumerate(sharded.placements):
        if placement.is_shard():
            dist.all_reduce(total, group=sharded.device_mesh.get_group(dim))
    return local + (total - local.detach())


def _fresh(settings: LayerSettings, key: torch.Tensor, param: torch.Tensor, weight: torch.Tensor, part: str):
    """``random_ablate``'s values for ``param`` (``part``: "weight" or "bias"), drawn like the
    kind's own initialisation."""
    init = getattr(INITS[KINDS[settings.kind].init], part)
    return init(key, param, fan_in(settings.kind, tuple(weight.shape))).to(device=param.device, dtype=param.dtype)


def unit_masks(weight, bias, weight_mask_params, bias_mask_params, key, settings: LayerSettings, *, hard: bool,
               subnetworks=(None, None)) -> LayerMasks:
    """(weight mask, weight replacement, bias mask, bias replacement) at unit shape. A kernel:
    ``settings`` is checked already. ``subnetworks``: hard masks h already computed from these
    parameters."""
    row, hp, ablation = settings.row, settings.hparams, ABLATION_ROWS[settings.ablation]
    if not hard and row.has_params and settings.ablation != "none":
        raise ValueError(f"cannot ablate while training: ablation={settings.ablation!r} needs a hard mask; "
                         "call .eval() (or freeze the mask parameters) first, or use ablation='none'")
    keys = nr.split(key, 4) if key is not None else (None,) * 4

    def one(params, unit, h, k_draw, k_fresh, part, base):
        if params is None:
            return None, None
        unit = unit or elementwise_unit(params.shape)  # a bias is masked entry by entry
        if hard or not row.has_params:
            if h is None:
                h = row.hard(params, unit=unit, **hp)
            elif tuple(h.shape) != tuple(params.shape):
                raise ValueError(f"subnetworks entry of shape {tuple(h.shape)} must have its mask parameters' shape "
                                 f"{tuple(params.shape)}")
            return ablation.mask(h, k_draw), (_fresh(settings, k_fresh, base, weight, part) if ablation.replaces else None)
        return row.soft(params, k_draw, unit=unit, **hp), None

    wm, wr = one(weight_mask_params, settings.unit, subnetworks[0], keys[0], keys[2], "weight", weight)
    bm, br = (None, None) if bias is None else one(bias_mask_params, None, subnetworks[1], keys[1], keys[3], "bias", bias)
    return LayerMasks(wm, wr, bm, br)


def apply_mask(param: torch.Tensor, mask: torch.Tensor | None, replacement: torch.Tensor | None = None) -> torch.Tensor:
    """``param * mask`` (+ ``replacement * (1 - mask)``), the mask cast to ``param``'s dtype.

    With ``mask=None`` the parameter is returned untouched, so an unmasked path is bitwise the
    base layer. The mask broadcasts from its mask-unit shape.
    """
    if mask is None:
        return param
    check_broadcasts_to("mask", mask, "param", tuple(param.shape))
    if replacement is not None:
        check_same_shape("replacement", replacement, "param", param)
    m = mask.to(param.dtype)
    out = param * m
    if replacement is not None:
        out = out + replacement * (1 - m)
    return out


def apply_unit_masks(weight, bias, masks: LayerMasks, unit: MaskUnit) -> MaskedParameters:
    """Broadcast unit masks to the parameters and apply them: W * m (+ R * (1 - m))."""
    wm, wr, bm, br = masks
    if wm is not None:
        wm = expand(wm, unit)
    w = apply_mask(weight, wm, wr)
    b = None if bias is None else apply_mask(bias, bm, br)
    wm = None if wm is None else wm.to(weight.dtype).expand_as(weight)
    bm = None if bias is None or bm is None else bm.to(bias.dtype).expand_as(bias)
    return MaskedParameters(w, b, wm, bm)


def named_unit(kind: str, weight, weight_mask_params) -> str:
    """``neuron`` when theta has the neuron shape of ``weight`` (and not its own), else ``weight``."""
    if not isinstance(weight, torch.Tensor) or not isinstance(weight_mask_params, torch.Tensor):
        return "weight"
    try:
        neuron = resolve_unit(kind, tuple(weight.shape), "neuron").shape
    except ValueError:
        return "weight"  # a weight that does not fit its kind: the shape check names the problem
    same = tuple(weight_mask_params.shape) == tuple(weight.shape)
    return "neuron" if not same and tuple(weight_mask_params.shape) == neuron else "weight"


def _check_base(kind: str, weight, bias) -> None:
    """The base parameters fit a ``kind`` layer: the weight's dimensions, one bias entry per output unit."""
    row = kind_row(kind)
    check_tensor("weight", weight)
    w_shape = tuple(weight.shape)
    if len(w_shape) != row.dims:
        raise ValueError(f"weight of a {kind} layer must have {row.dims} dimensions, got shape {w_shape}")
    if bias is not None:
        check_tensor("bias", bias)
        if tuple(bias.shape) != (w_shape[row.out_axis],):
            raise ValueError(f"bias must have shape {(w_shape[row.out_axis],)} (one entry per output unit of weight "
                             f"{w_shape}), got {tuple(bias.shape)}")


def _check_thetas(settings: LayerSettings, weight, bias, weight_mask_params, bias_mask_params) -> None:
    """Theta of the weight has the unit's shape (magnitude pruning: the weight itself); theta of
    the bias needs a bias and has its shape."""
    w_shape = tuple(weight.shape)
    if weight_mask_params is not None:
        check_tensor("weight_mask_params", weight_mask_params)
        if tuple(weight_mask_params.shape) != settings.unit.shape:
            what = f"the shape of mask_unit={settings.unit.name!r}" if settings.row.has_params else "the weight's shape"
            raise ValueError(f"weight_mask_params must have {what}, {settings.unit.shape}, for a {settings.kind} weight "
                             f"of shape {w_shape}, got {tuple(weight_mask_params.shape)}")
    if bias_mask_params is not None:
        check_tensor("bias_mask_params", bias_mask_params)
        if bias is None:
            raise ValueError("bias_mask_params given but the layer has no bias (mask_bias=True needs a bias)")
        if tuple(bias_mask_params.shape) != tuple(bias.shape):
            raise ValueError(f"bias_mask_params must have the bias's shape {tuple(bias.shape)}, "
                             f"got {tuple(bias_mask_params.shape)}")


def _checked(weight, bias, weight_mask_params, bias_mask_params, key, *, strategy, kind, hard, ablation, mask_unit,
             unit_sizes, check_finite_params, hparams) -> tuple[LayerSettings, bool]:
    """Every argument of :func:`mask_parameters` checked: (the settings, whether masks are hard)."""
    row = strategy_row(strategy)
    _check_base(kind, weight, bias)
    mask_unit = named_unit(kind, weight, weight_mask_params) if mask_unit is None else mask_unit
    settings = layer_settings(strategy, kind, tuple(weight.shape), mask_unit=mask_unit, unit_sizes=unit_sizes,
                              ablation=ablation, **hparams)
    hard = check_bool("hard", hard) or not row.has_params
    _check_thetas(settings, weight, bias, weight_mask_params, bias_mask_params)
    needs_key = (hard and ABLATION_ROWS[ablation].random) or (not hard and row.needs_key)
    if needs_key and key is None:
        raise ValueError(f"{strategy} with hard={hard}, ablation={ablation!r} draws random numbers and needs a key, "
                         "got key=None")
    if hard and row.has_params and check_bool("check_finite_params", check_finite_params):
        for name, p in (("weight_mask_params", weight_mask_params), ("bias_mask_params", bias_mask_params)):
            if p is not None:
                check_finite_tensor(p, name)
    return settings, hard


def layer_masks(weight, bias, weight_mask_params, bias_mask_params, key, *, strategy: str, kind: str, hard: bool,
                ablation: str = "none", mask_unit: str | None = None, unit_sizes=None, check_finite_params: bool = True,
                subnetworks=(None, None), **hparams: Any) -> LayerMasks:
    """:func:`mask_parameters`' masks before they are applied, every argument checked: (weight
    mask, weight replacement, bias mask, bias replacement), masks at unit shape, None where not masked."""
    settings, hard = _checked(weight, bias, weight_mask_params, bias_mask_params, key, strategy=strategy, kind=kind,
                              hard=hard, ablation=ablation, mask_unit=mask_unit, unit_sizes=unit_sizes,
                              check_finite_params=check_finite_params, hparams=hparams)
    return unit_masks(weight, bias, weight_mask_params, bias_mask_params, key, settings, hard=hard,
                      subnetworks=subnetworks)


def mask_parameters(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_mask_params: torch.Tensor | None,
    bias_mask_params: torch.Tensor | None,
    key: torch.Tensor | None,
    *,
    strategy: str,
    kind: str,
    hard: bool,
    ablation: str = "none",
    mask_unit: str | None = None,
    unit_sizes: Mapping[str, int] | None = None,
    check_finite_params: bool = True,
    **hparams: Any,
) -> MaskedParameters:
    """The effective weight and bias of a masked layer, and the masks applied.

    Args:
        weight, bias: the base layer's parameters (bias may be None).
        weight_mask_params, bias_mask_params: theta (None: that tensor is not masked). Theta of
            the weight has the unit shape of ``mask_unit``; of the bias, the bias's shape.
            Magnitude pruning has no theta: pass the weight (and the bias, to mask it) itself.
        key: PRNG key ``(2,)``: hard-concrete noise when soft, ablation draws when hard; split
            four ways (weight draw, bias draw, weight replacement, bias replacement).
        strategy: a row of :data:`~neurosurgeon.functional.STRATEGIES`: ``continuous_sparsification``,
            ``hard_concrete`` or ``magnitude_pruning``.
        kind: a row of :data:`~neurosurgeon.functional.KINDS`: ``linear``, ``gpt_conv1d``,
            ``conv1d`` or ``conv2d``.
        hard: binary (eval-mode) masks when True, training masks when False.
        ablation: applied to the hard mask; anything but ``none`` while soft is an error.
        mask_unit, unit_sizes: ``weight``, ``neuron`` or an einops pattern (see
            :func:`~neurosurgeon.functional.unit_shape`); None reads ``weight`` or ``neuron``
            off theta's shape. Magnitude pruning masks single weights only.
        check_finite_params: when hard, raise if theta holds NaN/inf instead of binarising it
            (one host read; skipped under transforms).
        **hparams: the strategy's hyper-parameters (``STRATEGIES[strategy].hparams``).

    Returns:
        :class:`MaskedParameters`.

    Example:
        >>> w, theta = torch.randn(3, 4), torch.randn(3, 1)
        >>> out = mask_parameters(w, None, theta, None, None, strategy="continuous_sparsification",
        ...                       kind="linear", hard=True, mask_unit="neuron")
        >>> torch.equal(out.weight, w * (theta > 0))
        True
    """
    settings, hard = _checked(weight, bias, weight_mask_params, bias_mask_params, key, strategy=strategy, kind=kind,
                              hard=hard, ablation=ablation, mask_unit=mask_unit, unit_sizes=unit_sizes,
                              check_finite_params=check_finite_params, hparams=hparams)
    masks = unit_masks(weight, bias, weight_mask_params, bias_mask_params, key, settings, hard=hard)
    return apply_unit_masks(weight, bias, masks, settings.unit)
