"""The package imports and exposes the reference's class names at both import paths."""

import neurosurgeon
import neurosurgeon.modules

NAMES = [
    "MaskLayer", "ContSparseLayer", "ContSparseLinear", "ContSparseGPTConv1D", "ContSparseConv1d", "ContSparseConv2d",
    "HardConcreteLayer", "HardConcreteLinear", "HardConcreteGPTConv1D", "HardConcreteConv1d", "HardConcreteConv2d",
    "MagPruneLayer", "MagPruneLinear", "MagPruneGPTConv1D", "MagPruneConv1d", "MagPruneConv2d",
]


def test_reference_class_names_importable_from_package_and_modules():
    for name in NAMES:
        assert getattr(neurosurgeon, name) is getattr(neurosurgeon.modules, name)
