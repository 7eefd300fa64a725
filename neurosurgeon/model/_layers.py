"""What the model level needs to know about one mask layer, read in one place.

The model-level code (functional path, I/O, analysis) needs a mask layer's strategy, layer
kind and hyper-parameters as the functional core takes them; this file is the only one that
reads them off :class:`neurosurgeon.modules.MaskLayer`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch.nn as nn

from ..functional.strategies import STRATEGIES
from ..modules import MaskLayer

__all__ = ["LayerSpec", "layer_spec", "mask_layers", "require_mask_layers", "set_module"]


class LayerSpec(NamedTuple):
    """A mask layer's static configuration: strategy, layer kind, hyper-parameters, masked tensors."""

    strategy: str
    kind: str
    hparams: dict[str, Any]
    mask_bias: bool
    mask_unit: str
    unit_sizes: dict[str, int] | None

    @property
    def has_params(self) -> bool:
        """Whether the strategy has trainable mask parameters (magnitude pruning has none)."""
        return STRATEGIES[self.strategy].has_params


def layer_spec(layer: MaskLayer) -> LayerSpec:
    """The :class:`LayerSpec` of ``layer``."""
    return LayerSpec(layer.strategy, layer.layer_kind, layer.mask_hparams, layer.mask_bias, layer.mask_unit,
                     layer.unit_sizes)


def mask_layers(model: nn.Module) -> dict[str, MaskLayer]:
    """Every mask layer of ``model``, by module name, in ``named_modules`` order.

    The position of a layer in this dict is its *layer index*: layer ``i`` draws its random
    masks from ``fold_in(key, i)`` (see :func:`neurosurgeon.inject_masks` and
    :func:`neurosurgeon.masked_weights`). A layer registered at two paths is listed once.

    Args:
        model: any ``nn.Module`` (the model itself may be a mask layer, named ``""``).

    Returns:
        dict name -> :class:`~neurosurgeon.modules.MaskLayer`.
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskLayer)}


def require_mask_layers(model: nn.Module) -> dict[str, MaskLayer]:
    """:func:`mask_layers`, raising ValueError when there are none."""
    layers = mask_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no mask layers; call neurosurgeon.inject_masks(model, targets) first"
        )
    return layers


def set_module(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at dotted ``path`` of ``model``; returns the (new) root, which is ``module``
    itself when ``path`` is empty."""
    if not path:
        return module
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, module)
    return model
