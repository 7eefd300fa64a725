"""One masked layer as a pure function: (weight, bias, theta, key, settings) -> what it computes with.

Every shell (the layers, the model-level functional path, research code) goes through
:func:`mask_parameters`, so the composition of strategy, unit and ablation is written once.

Keys: a layer's key is split four ways (weight draw, bias draw, weight replacement, bias
replacement). A hard-concrete training forward draws its noise from the key it is given; the
layers pass ``noise_key(layer_key, step)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as pytree

from . import random as nr
from ._checks import ABLATIONS, LAYER_KINDS, RANDOM_ABLATIONS, check_bool, check_choice, check_layer_tensors, concrete_int
from .ablation import ablate
from .layers import apply_mask
from .reinit import reinit_bias, reinit_weight
from .strategies import resolve_hparams, strategy_row
from .units import expand_mask, unit_shape

__all__ = ["MaskedParameters", "mask_parameters", "hard_mask", "mask_l0"]

#: fold_in tag that separates a layer's training-noise stream from its ablation draws.
NOISE_STREAM = 0x6E6F6973


def noise_key(key: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Key of the hard-concrete noise of training step ``step``: fold_in(fold_in(key, NOISE_STREAM), step)."""
    return nr.fold_in(nr.fold_in(key, NOISE_STREAM), step)


@dataclasses.dataclass(frozen=True)
class MaskedParameters:
    """What a masked layer computes with: the effective weight and bias, and the masks applied
    (broadcast to the parameter's shape; None where nothing was masked).

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


def check_finite_tensor(params: torch.Tensor, name: str) -> None:
    """Raise if mask parameters hold NaN/inf, rather than silently binarising them to 0.
    Skipped where reading a value would break a transform."""
    n_bad = concrete_int((~torch.isfinite(params)).sum())
    if n_bad:
        raise ValueError(f"{name} holds {n_bad} non-finite value(s) (NaN or inf); cannot make a hard mask from them")


def hard_mask(strategy: str, params: torch.Tensor, **hparams: Any) -> torch.Tensor:
    """The subnetwork h (binary, params' shape and dtype) a strategy's parameters describe.

    ``params`` is theta, or for magnitude pruning the weight itself.

    Example:
        >>> hard_mask("hard_concrete", torch.tensor([0.0, -1e-17, 1e-9, 5e-3]))
        tensor([0., 0., 1., 1.])
    """
    return strategy_row(strategy).hard(params, **resolve_hparams(strategy, hparams))


def mask_l0(strategy: str, params: torch.Tensor, param_numel: int, *, hard: bool,
            applied_mask: torch.Tensor | None = None, **hparams: Any) -> torch.Tensor:
    """L0 of one masked tensor, counted at the parameter's size (a unit counts once per weight it gates).

    Soft: the strategy's L0 term (continuous sparsification's sum of sigma(beta theta), hard
    concrete's expected L0 of eq. 12); where that term is the soft mask's sum, ``applied_mask``
    (the soft mask a forward made from ``params``, at their shape) is summed instead of computed
    again. Hard: the ones of ``applied_mask`` (default: h).

    Example:
        >>> mask_l0("continuous_sparsification", torch.zeros(3, 1), 12, hard=False).item()
        6.0
    """
    row, hp = strategy_row(strategy), resolve_hparams(strategy, hparams)
    scale = param_numel // max(params.numel(), 1)
    if check_bool("hard", hard) or row.l0 is None:
        m = applied_mask if applied_mask is not None else row.hard(params, **hp)
        # Counted in int64 (a half-precision sum is inexact above 256), reported as a float.
        return ((m != 0).sum() * scale).to(torch.promote_types(params.dtype, torch.float32))
    if hasattr(params, "to_local"):  # a sharded theta (DTensor): each rank sums its own shard's terms
        return _sum_over_shards(row.l0(params.to_local(), **hp) * scale, params)
    if applied_mask is not None and row.l0_is_mask_sum:
        if tuple(applied_mask.shape) != tuple(params.shape):
            raise ValueError(f"applied_mask of shape {tuple(applied_mask.shape)} must have params' shape {tuple(params.shape)}")
        return applied_mask.sum() * scale
    return row.l0(params, **hp) * scale


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


def unit_masks(weight, bias, weight_mask_params, bias_mask_params, key, *, strategy: str, kind: str, hard: bool,
               ablation: str, hparams: Mapping[str, Any], subnetworks=(None, None)):
    """(weight mask, weight replacement, bias mask, bias replacement) at unit shape; settings
    already checked. ``subnetworks``: hard masks h already computed from these parameters."""
    row = strategy_row(strategy)
    if not hard and row.has_params and ablation != "none":
        raise ValueError(f"cannot ablate while training: ablation={ablation!r} needs a hard mask; "
                         "call .eval() (or freeze the mask parameters) first, or use ablation='none'")
    keys = nr.split(key, 4) if key is not None else (None,) * 4

    def one(params, h, k_draw, k_reinit, reinit):
        if params is None:
            return None, None
        if hard or not row.has_params:
            if h is None:
                h = row.hard(params, **hparams)
            elif tuple(h.shape) != tuple(params.shape):
                raise ValueError(f"subnetworks entry of shape {tuple(h.shape)} must have its mask parameters' shape "
                                 f"{tuple(params.shape)}")
            return ablate(h, k_draw, ablation=ablation), (reinit(k_reinit) if ablation == "random_ablate" else None)
        return row.soft(params, k_draw, **hparams), None

    wm, wr = one(weight_mask_params, subnetworks[0], keys[0], keys[2], lambda k: reinit_weight(k, kind, weight))
    bm, br = (None, None) if bias is None else one(bias_mask_params, subnetworks[1], keys[1], keys[3],
                                                   lambda k: reinit_bias(k, kind, weight, bias))
    return LayerMasks(wm, wr, bm, br)


def apply_unit_masks(weight, bias, masks, *, kind: str, mask_unit: str, unit_sizes) -> MaskedParameters:
    """Broadcast unit masks to the parameters and apply them: W * m (+ R * (1 - m))."""
    wm, wr, bm, br = masks
    if wm is not None:
        wm = expand_mask(wm, weight.shape, mask_unit, unit_sizes, kind=kind)
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
        neuron = unit_shape(tuple(weight.shape), "neuron", kind=kind)
    except ValueError:
        return "weight"  # a weight that does not fit its kind: the shape check names the problem
    same = tuple(weight_mask_params.shape) == tuple(weight.shape)
    return "neuron" if not same and tuple(weight_mask_params.shape) == neuron else "weight"


def layer_masks(weight, bias, weight_mask_params, bias_mask_params, key, *, strategy: str, kind: str, hard: bool,
                ablation: str = "none", mask_unit: str | None = None, unit_sizes=None, check_finite_params: bool = True,
                subnetworks=(None, None), **hparams: Any):
    """:func:`mask_parameters`' masks before they are applied, checked: (weight mask, weight
    replacement, bias mask, bias replacement), masks at unit shape, None where not masked."""
    row = strategy_row(strategy)
    check_choice("kind", kind, LAYER_KINDS)
    mask_unit = named_unit(kind, weight, weight_mask_params) if mask_unit is None else mask_unit
    check_choice("ablation", ablation, ABLATIONS)
    hard = check_bool("hard", hard) or not row.has_params
    hp = resolve_hparams(strategy, hparams)
    check_layer_tensors(kind, weight, bias, weight_mask_params, bias_mask_params, mask_unit=mask_unit,
                        unit_sizes=unit_sizes, magnitude=not row.has_params)
    needs_key = (hard and ablation in RANDOM_ABLATIONS) or (not hard and row.needs_key)
    if needs_key and key is None:
        raise ValueError(f"{strategy} with hard={hard}, ablation={ablation!r} draws random numbers and needs a key, "
                         "got key=None")
    if hard and row.has_params and check_bool("check_finite_params", check_finite_params):
        for name, p in (("weight_mask_params", weight_mask_params), ("bias_mask_params", bias_mask_params)):
            if p is not None:
                check_finite_tensor(p, name)
    return unit_masks(weight, bias, weight_mask_params, bias_mask_params, key, strategy=strategy, kind=kind,
                      hard=hard, ablation=ablation, hparams=hp, subnetworks=subnetworks)


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
        key: PRNG key ``(2,)``: hard-concrete noise when soft, ablation draws when hard.
        strategy: ``continuous_sparsification``, ``hard_concrete`` or ``magnitude_pruning``.
        kind: ``linear``, ``gpt_conv1d``, ``conv1d`` or ``conv2d``.
        hard: binary (eval-mode) masks when True, training masks when False.
        ablation: applied to the hard mask; anything but ``none`` while soft is an error.
        mask_unit, unit_sizes: ``weight``, ``neuron`` or an einops pattern (see
            :func:`~neurosurgeon.functional.unit_shape`); None reads ``weight`` or ``neuron``
            off theta's shape.
        check_finite_params: when hard, raise if theta holds NaN/inf instead of binarising it
            (one host read; skipped under transforms).
        **hparams: the strategy's hyper-parameters (``STRATEGIES[strategy].mask_hparams``).

    Returns:
        :class:`MaskedParameters`.

    Example:
        >>> w, theta = torch.randn(3, 4), torch.randn(3, 1)
        >>> out = mask_parameters(w, None, theta, None, None, strategy="continuous_sparsification",
        ...                       kind="linear", hard=True, mask_unit="neuron")
        >>> torch.equal(out.weight, w * (theta > 0))
        True
    """
    mask_unit = named_unit(kind, weight, weight_mask_params) if mask_unit is None else mask_unit
    masks = layer_masks(weight, bias, weight_mask_params, bias_mask_params, key, strategy=strategy, kind=kind,
                        hard=hard, ablation=ablation, mask_unit=mask_unit, unit_sizes=unit_sizes,
                        check_finite_params=check_finite_params, **hparams)
    return apply_unit_masks(weight, bias, masks, kind=kind, mask_unit=mask_unit, unit_sizes=unit_sizes)
