"""Baking: a plain copy of a masked model with the masked weights written in."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..modules import MaskLayer
from ._layers import require_mask_layers, set_module
from .distributed import require_unsharded
from .freeze import set_freeze_base

__all__ = ["bake"]


@torch.no_grad()
def bake(model: nn.Module, *, hard: bool = True) -> nn.Module:
    """A plain copy of ``model`` with every mask layer replaced by its base layer type
    (``nn.Linear``, ``Conv1D``, ``nn.Conv1d/2d``) holding the masked weights.

    The copy computes what the masked model computes (in eval mode, with the current
    ablation, ``use_masks`` and keys) with zero masking overhead; ship it, or evaluate an
    ablated model at full speed. ``model`` itself is untouched. A weight shared by two mask
    layers with the same mask stays shared; a weight tied to an unmasked module (e.g. an
    embedding tied to a masked output layer) is untied, since the two now differ. The copy is
    not frozen: plain ``train()`` behaviour and each parameter's original ``requires_grad``.

    Args:
        model: a model with mask layers.
        hard: bake the hard masks (eval mode; default). False bakes the masks of the layers'
            current mode (the soft training masks for layers in training mode).

    Returns:
        the baked copy, in ``model``'s train/eval mode.
    """
    require_unsharded(model, "bake")
    for name, layer in require_mask_layers(model).items():
        if hard or layer._is_hard():
            layer.check_mask_params(name)
    mode = model.training
    twin = copy.deepcopy(model)
    set_freeze_base(twin, False)
    if hard:
        twin.eval()
    baked: dict[int, nn.Module] = {}
    shared: dict[tuple, nn.Parameter] = {}
    for path, layer in list(twin.named_modules(remove_duplicate=False)):
        if not isinstance(layer, MaskLayer):
            continue
        if id(layer) not in baked:
            plain = layer.bake()
            for pname in ("weight", "bias"):
                p, base = getattr(plain, pname, None), getattr(layer, pname, None)
                if p is None or base is None:
                    continue
                p.requires_grad_(base.requires_grad)
                # Tied base weights with identical masked values stay one Parameter.
                tag = (id(base), pname)
                if tag in shared and torch.equal(shared[tag], p):
                    setattr(plain, pname, shared[tag])
                else:
                    shared.setdefault(tag, p)
            baked[id(layer)] = plain
        twin = set_module(twin, path, baked[id(layer)])
    return twin.train(mode)
