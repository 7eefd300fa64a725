"""Stateful ``nn.Module`` shells with the reference's class names; all maths is in
:mod:`neurosurgeon.functional`."""

from .cache import cached_masks, soft_masks_for_l0
from .contsparse import ContSparseConv1d, ContSparseConv2d, ContSparseGPTConv1D, ContSparseLayer, ContSparseLinear
from .hardconcrete import (
    HardConcreteConv1d,
    HardConcreteConv2d,
    HardConcreteGPTConv1D,
    HardConcreteLayer,
    HardConcreteLinear,
)
from .magprune import MagPruneConv1d, MagPruneConv2d, MagPruneGPTConv1D, MagPruneLayer, MagPruneLinear
from ._layer_types import UnsupportedLayerError
from .mask_layer import MaskLayer

__all__ = [
    "MaskLayer", "cached_masks", "soft_masks_for_l0", "UnsupportedLayerError",
    "ContSparseLayer", "ContSparseLinear", "ContSparseGPTConv1D", "ContSparseConv1d", "ContSparseConv2d",
    "HardConcreteLayer", "HardConcreteLinear", "HardConcreteGPTConv1D", "HardConcreteConv1d", "HardConcreteConv2d",
    "MagPruneLayer", "MagPruneLinear", "MagPruneGPTConv1D", "MagPruneConv1d", "MagPruneConv2d",
]
