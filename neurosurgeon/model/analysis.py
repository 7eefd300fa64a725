"""Analysing a trained mask: ablation switches, masks on/off, and the discovered subnetwork."""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import functional as F
from ..functional.units import expand_mask
from ..functional._checks import check_bool, check_choice
from ..functional.ablation import ABLATIONS
from ._layers import layer_spec, require_mask_layers
from ._sharding import gathered
from .baselines import _check_complement_possible
from .select import match_names

__all__ = ["set_ablation", "set_use_masks", "subnetwork"]


def set_ablation(model: nn.Module, ablation: str, *, force_resample: bool = False) -> None:
    """Set the ablation mode of every mask layer of ``model`` .

    Ablations act on the hard mask, so put the model in eval mode before a forward with an
    ablation other than ``none`` (a training layer raises "cannot ablate while training").

    Args:
        model: a model with mask layers.
        ablation: ``none``, ``zero_ablate``, ``random_ablate``, ``randomly_sampled`` or
            ``complement_sampled``.
        force_resample: draw new random masks / replacement values at each layer's next use.

    Raises:
        ValueError: ``complement_sampled`` where some layer's subnetwork keeps more units than
            lie outside it (naming each such tensor, its counts and the remedy); no layer is
            changed then.
    """
    check_choice("ablation", ablation, ABLATIONS)
    check_bool("force_resample", force_resample)
    if ablation == "complement_sampled":  # here, naming the layers, not at a later forward's draw
        _check_complement_possible(model)
    for layer in require_mask_layers(model).values():
        layer.ablation = ablation
        if force_resample:
            layer.force_resample = True


def set_use_masks(model: nn.Module, on: bool, names=None) -> None:
    """Turn masking on or off for the whole model or for some of its mask layers.

    A layer with masks off computes exactly as the base layer.

    Args:
        model: a model with mask layers.
        on: masks on (True) or off (False).
        names: mask-layer names or glob patterns (default: every mask layer); a name or
            pattern matching no mask layer is a ValueError.
    """
    on = check_bool("on", on)
    layers = require_mask_layers(model)
    chosen = list(layers) if names is None else match_names(layers, names)
    for name in chosen:
        layers[name].use_masks = on


@torch.no_grad()
def subnetwork(model: nn.Module, *, broadcast: bool = True) -> dict[str, torch.Tensor]:
    """The discovered subnetwork: each masked tensor's hard mask h as a bool tensor.

    h is the strategy's binary mask (theta > 0 for continuous sparsification and hard
    concrete, the kept magnitudes for magnitude pruning), independent of the ablation mode,
    of ``use_masks`` and of train/eval mode.

    Args:
        model: a model with mask layers.
        broadcast: masks at the parameter's shape (default) or at the mask-unit shape.

    Returns:
        dict ``"<layer>.weight"`` (and ``"<layer>.bias"`` for masked biases) -> bool tensor.
    """
    out = {}
    for name, layer in require_mask_layers(model).items():
        spec = layer_spec(layer)
        layer.check_mask_params(name)
        prefix = f"{name}." if name else ""
        for suffix, params, base in zip(("weight", "bias"), layer.mask_tensors(), (layer.weight, layer.bias)):
            if params is None or (suffix == "bias" and not spec.mask_bias):
                continue
            # A sharded (DTensor) theta is gathered: h is the whole subnetwork on every rank.
            unit = layer.settings.unit if suffix == "weight" else None  # a row may choose h per unit
            h = F.hard_mask(spec.strategy, gathered(params), unit=unit, **spec.hparams).bool()
            if broadcast:
                if suffix == "weight":
                    h = expand_mask(h, base.shape, spec.mask_unit, spec.unit_sizes, kind=spec.kind)
                h = h.expand(base.shape)
            out[prefix + suffix] = h.clone()
    return out
