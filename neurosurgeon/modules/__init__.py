"""Stateful ``nn.Module`` shells with the reference's class names; all maths is in
:mod:`neurosurgeon.functional`.

The classes (``ContSparseLinear``, ``HardConcreteConv2d``, ``MagPruneGPTConv1D``, ...) are derived
from the strategy table x the layer-kind table (:mod:`.shells`); a strategy added to the table
gets its classes from :func:`mask_class` with no other change.
"""

from ._layer_types import SUPPORTED_LAYERS, UnsupportedLayerError
from .cache import cached_masks, soft_masks_for_l0
from .mask_layer import MaskLayer
from .shells import mask_class, mask_class_for, strategy_class, v0_classes

_CLASSES = v0_classes()
globals().update(_CLASSES)  # ContSparseLayer, ContSparseLinear, ...: one name per class in the tables

__all__ = ["MaskLayer", "cached_masks", "soft_masks_for_l0", "UnsupportedLayerError", "mask_class", *_CLASSES]
