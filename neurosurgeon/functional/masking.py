"""One masked layer, start to finish, as a pure function: the composition every shell calls.

``mask_parameters`` turns (weight, bias, mask parameters, key, hyper-parameters) into the
weight and bias the layer should use, plus the masks it applied. Modules, the model-level
functional path and user research code all go through it, so no mask formula is written twice.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import random as nr
from ._checks import (
    ABLATIONS,
    LAYER_KINDS,
    STRATEGIES,
    check_bool,
    check_choice,
    check_fraction,
    check_layer_tensors,
    check_same_shape,
    check_stretch,
    check_temperature,
    concrete_int,
)
from .ablation import ablate
from .continuous_sparsification import (
    continuous_sparsification_hard_mask,
    continuous_sparsification_l0,
    continuous_sparsification_mask,
)
from .hard_concrete import hard_concrete_hard_mask, hard_concrete_l0, hard_concrete_mask
from .layers import apply_mask
from .magnitude import magnitude_mask
from .reinit import reinit_bias, reinit_weight

__all__ = ["LayerMasks", "layer_masks", "apply_layer_masks", "MaskedParameters", "hard_mask", "soft_mask", "mask_l0", "mask_parameters", "draw_keys", "noise_key", "check_finite_params"]


class MaskedParameters(NamedTuple):
    """What a masked layer computes with: the effective weight/bias and the masks applied
    (broadcast to the parameter's shape; ``None`` where nothing was masked)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_mask: torch.Tensor | None
    bias_mask: torch.Tensor | None


def draw_keys(key: torch.Tensor) -> torch.Tensor:
    """The four per-layer sub-keys: weight draw, bias draw, weight replacement, bias replacement."""
    return nr.split(key, 4)


#: fold_in tag that separates a layer's training-noise stream from its ablation draws.
NOISE_STREAM = 0x6E6F6973


def noise_key(key: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """Key for the hard-concrete noise of training step ``step``: fold_in(fold_in(key, tag), step)."""
    return nr.fold_in(nr.fold_in(key, NOISE_STREAM), step)


def check_finite_params(params: torch.Tensor, name: str) -> None:
    """Raise if mask parameters hold NaN/inf, rather than silently binarising them to 0.

    Skipped inside ``torch.compile`` graphs and functorch transforms, where reading a value
    would break the transform.
    """
    bad = (~torch.isfinite(params)).sum()
    n_bad = concrete_int(bad)
    if n_bad:
        raise ValueError(f"{name} holds {n_bad} non-finite value(s) (NaN or inf); cannot make a hard mask from them")


def hard_mask(
    strategy: str,
    params: torch.Tensor,
    *,
    left: float = -0.1,
    right: float = 1.1,
    prune_percentage: float = 0.2,
) -> torch.Tensor:
    """The subnetwork h (binary, params' shape and dtype) a strategy's parameters describe.

    ``params`` is theta for continuous sparsification and hard concrete, and the weight itself
    for magnitude pruning.
    """
    check_choice("strategy", strategy, STRATEGIES)
    if strategy == "continuous_sparsification":
        return continuous_sparsification_hard_mask(params)
    if strategy == "hard_concrete":
        return hard_concrete_hard_mask(params, left=left, right=right)
    return magnitude_mask(params, prune_percentage=prune_percentage)


def soft_mask(
    strategy: str,
    params: torch.Tensor,
    key: torch.Tensor | None,
    *,
    temperature: float,
    left: float = -0.1,
    right: float = 1.1,
) -> torch.Tensor:
    """The differentiable training mask: sigma(beta theta) (CS) or a hard-concrete sample (HC)."""
    check_choice("strategy", strategy, STRATEGIES[:2])
    if strategy == "continuous_sparsification":
        return continuous_sparsification_mask(params, temperature=temperature)
    if key is None:
        raise ValueError("hard_concrete training samples noise and needs a key, got key=None")
    return hard_concrete_mask(params, key, temperature=temperature, left=left, right=right)


def mask_l0(
    strategy: str,
    params: torch.Tensor,
    param_numel: int,
    *,
    hard: bool,
    temperature: float = 1.0,
    left: float = -0.1,
    right: float = 1.1,
    prune_percentage: float = 0.2,
    applied_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L0 of one masked tensor, counted at the parameter's size (a neuron entry counts for its row).

    Soft: the CS surrogate sum sigma(beta theta) or the HC expected-L0 (Louizos et al. eq. 12).
    Hard: the number of ones in ``applied_mask`` (default: the strategy's hard mask).
    """
    check_choice("strategy", strategy, STRATEGIES)
    scale = param_numel // params.numel()
    if hard:
        m = applied_mask
        if m is None:
            m = hard_mask(strategy, params, left=left, right=right, prune_percentage=prune_percentage)
        # Count in int64 (a half-precision sum is inexact above 256 or 2048), report as a float.
        return ((m != 0).sum() * scale).to(torch.promote_types(params.dtype, torch.float32))
    if strategy == "continuous_sparsification":
        return continuous_sparsification_l0(params, temperature=temperature) * scale
    return hard_concrete_l0(params, temperature=temperature, left=left, right=right) * scale


class LayerMasks(NamedTuple):
    """The masks one layer applies, at mask-unit shape, and the ``random_ablate`` replacements
    (parameter-shaped; ``None`` unless that ablation is active). ``None`` masks: not masked."""

    weight_mask: torch.Tensor | None
    weight_replacement: torch.Tensor | None
    bias_mask: torch.Tensor | None
    bias_replacement: torch.Tensor | None


def layer_masks(
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
    temperature: float = 1.0,
    left: float = -0.1,
    right: float = 1.1,
    prune_percentage: float = 0.2,
    check_finite: bool = True,
    subnetworks: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> LayerMasks:
    """The masks (and replacement values) a masked layer applies (SPEC sections 2-3).

    Args:
        weight, bias: the base layer's parameters (bias may be None).
        weight_mask_params, bias_mask_params: theta at mask-unit shape (None: that tensor is
            not masked). Magnitude pruning has no theta: pass the weight (and the bias, to
            mask it) itself, since its mask is a function of the values.
        key: draw key ``(2,)``: hard-concrete noise when soft, ablation draws when hard.
        strategy: ``continuous_sparsification``, ``hard_concrete`` or ``magnitude_pruning``.
        kind: ``linear``, ``gpt_conv1d``, ``conv1d`` or ``conv2d`` (for replacement values).
        hard: eval-mode masks (binary) when True, training masks when False.
        ablation: applied to the hard mask; anything but ``none`` while soft is an error.
        check_finite: when hard, raise if theta holds NaN/inf instead of binarising it to 0
            (one host read per call; skipped under ``torch.compile``/``vmap``). The module
            shells pass False: they check once per version of their parameters.
        subnetworks: when hard (or magnitude pruning), the subnetworks h of (weight, bias)
            already computed with :func:`hard_mask` from these parameters, so they are not
            computed again (the module shells pass the magnitude masks they re-verify cheaply
            with :func:`~neurosurgeon.functional.magnitude_mask_and_threshold`).

    Raises:
        ValueError/TypeError: unknown strings, bad hyper-parameters, tensors whose shapes do
            not fit the layer (SPEC section 1), bias_mask_params without a bias, a bad key.

    Returns:
        :class:`LayerMasks`.
    """
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("kind", kind, LAYER_KINDS)
    check_choice("ablation", ablation, ABLATIONS)
    hard = check_bool("hard", hard)
    check_temperature(temperature)
    check_stretch(left, right)
    check_fraction("prune_percentage", prune_percentage)
    magnitude = strategy == "magnitude_pruning"
    check_layer_tensors(kind, weight, bias, weight_mask_params, bias_mask_params, magnitude=magnitude)
    if hard and not magnitude and check_bool("check_finite", check_finite):
        for name, p in (("weight_mask_params", weight_mask_params), ("bias_mask_params", bias_mask_params)):
            if p is not None:
                check_finite_params(p, name)
    if not hard and ablation != "none" and not magnitude:
        raise ValueError(
            f"cannot ablate while training: ablation={ablation!r} needs a hard mask; "
            "call .eval() (or freeze the mask parameters) first, or use ablation='none'"
        )
    keys = draw_keys(key) if key is not None else (None, None, None, None)

    given = (None, None) if subnetworks is None else subnetworks

    def one(params, h, k_draw, k_reinit, reinit):
        if params is None:
            return None, None
        if hard or magnitude:
            if h is None:
                h = hard_mask(strategy, params, left=left, right=right, prune_percentage=prune_percentage)
            else:
                check_same_shape("subnetworks entry", h, "its mask parameters", params)
            replacement = reinit(k_reinit) if ablation == "random_ablate" else None
            return ablate(h, k_draw, ablation=ablation), replacement
        return soft_mask(strategy, params, k_draw, temperature=temperature, left=left, right=right), None

    wm, wr = one(weight_mask_params, given[0], keys[0], keys[2], lambda k: reinit_weight(k, kind, weight))
    if bias is None:
        bm, br = None, None
    else:
        bm, br = one(bias_mask_params, given[1], keys[1], keys[3], lambda k: reinit_bias(k, kind, weight, bias))
    return LayerMasks(wm, wr, bm, br)


def apply_layer_masks(weight: torch.Tensor, bias: torch.Tensor | None, masks: LayerMasks) -> MaskedParameters:
    """Apply :class:`LayerMasks` to the parameters: W * m (+ R * (1 - m)), each mask broadcast."""
    w = apply_mask(weight, masks.weight_mask, masks.weight_replacement)
    b = None if bias is None else apply_mask(bias, masks.bias_mask, masks.bias_replacement)
    wm = None if masks.weight_mask is None else masks.weight_mask.to(weight.dtype).expand_as(weight)
    bm = None if bias is None or masks.bias_mask is None else masks.bias_mask.to(bias.dtype).expand_as(bias)
    return MaskedParameters(w, b, wm, bm)


def mask_parameters(weight, bias, weight_mask_params, bias_mask_params, key, **hparams) -> MaskedParameters:
    """Effective weight and bias of a masked layer: :func:`layer_masks` then :func:`apply_layer_masks`.

    Takes the same arguments as :func:`layer_masks`.

    Example:
        >>> import torch
        >>> w, theta = torch.randn(3, 4), torch.randn(3, 1)
        >>> out = mask_parameters(w, None, theta, None, None, strategy="continuous_sparsification",
        ...                       kind="linear", hard=True)
        >>> torch.equal(out.weight, w * (theta > 0))
        True
    """
    masks = layer_masks(weight, bias, weight_mask_params, bias_mask_params, key, **hparams)
    return apply_layer_masks(weight, bias, masks)
