"""Hard concrete layers (Louizos, Welling & Kingma 2018, arXiv 1712.01312).

Reference: ``NeuroSurgeon.Masking.hardconcrete_layer``. While training, each forward samples
gates z from the hard concrete distribution with noise drawn from the layer's key and a step
counter; when hard, z = 1[theta > tau] (tau = 0 at the default stretch). See
:mod:`neurosurgeon.functional.hard_concrete`. Nothing is compiled here: wrap a layer, a model or
a training step in ``torch.compile`` yourself to fuse the gate.
"""

from __future__ import annotations

import torch.nn as nn

from ..functional._checks import check_fraction, check_stretch, check_temperature
from ..functional.hard_concrete import LEFT, MASK_INIT_PERCENTAGE, RIGHT, TEMPERATURE
from ._layer_types import CONV1D, CONV2D, GPT_CONV1D, LINEAR
from .mask_layer import MaskLayer
from .tempered import TemperedMixin

__all__ = ["HardConcreteLayer", "HardConcreteLinear", "HardConcreteGPTConv1D", "HardConcreteConv1d", "HardConcreteConv2d"]


class HardConcreteLayer(TemperedMixin, MaskLayer):
    """Abstract hard-concrete layer.

    Args (beyond :class:`MaskLayer`):
        mask_init_percentage: p, the expected kept fraction at initialisation; theta starts at
            log(p / (1 - p)), p clipped to [1e-4, 1 - 1e-4].
        left_stretch, right_stretch: l < 0 and r > 1 (default -0.1, 1.1).
        temperature: beta of the concrete distribution (default 2/3).
    """

    _strategy = "hard_concrete"

    def __init__(self, *, mask_init_percentage: float = MASK_INIT_PERCENTAGE, left_stretch: float = LEFT, right_stretch: float = RIGHT,
                 temperature: float = TEMPERATURE, **kwargs):
        self._mask_init_percentage = check_fraction("mask_init_percentage", mask_init_percentage)
        self._left, self._right = check_stretch(left_stretch, right_stretch)
        self._temperature = check_temperature(temperature)
        super().__init__(**kwargs)

    def _init_hparams(self):
        return {"mask_init_percentage": self._mask_init_percentage}

    def _hparams(self):
        return {"temperature": self._temperature, "left": self._left, "right": self._right}

    @property
    def mask_init_percentage(self) -> float:
        return self._mask_init_percentage

    @mask_init_percentage.setter
    def mask_init_percentage(self, value: float) -> None:
        self._mask_init_percentage = check_fraction("mask_init_percentage", value)

    @property
    def left_stretch(self) -> float:
        return self._left

    @property
    def right_stretch(self) -> float:
        return self._right

    @classmethod
    def from_layer(cls, layer: nn.Module, ablation: str = "none", mask_unit: str = "weight", mask_bias: bool = False,
                   mask_init_percentage: float = MASK_INIT_PERCENTAGE, *, left_stretch: float = LEFT, right_stretch: float = RIGHT,
                   temperature: float = TEMPERATURE, unit_sizes=None, key=None):
        """Wrap an existing layer; the mask layer shares its ``weight`` and ``bias`` Parameters."""
        return cls._wrap(layer, key=key, ablation=ablation, mask_unit=mask_unit, unit_sizes=unit_sizes, mask_bias=mask_bias,
                         mask_init_percentage=mask_init_percentage, left_stretch=left_stretch,
                         right_stretch=right_stretch, temperature=temperature)


class HardConcreteLinear(HardConcreteLayer):
    """``nn.Linear`` with a hard-concrete mask."""

    _layer = LINEAR

    def __init__(self, in_features: int, out_features: int, bias: bool = True, ablation: str = "none",
                 mask_unit: str = "weight", mask_bias: bool = False, mask_init_percentage: float = MASK_INIT_PERCENTAGE, *,
                 left_stretch: float = LEFT, right_stretch: float = RIGHT, temperature: float = TEMPERATURE,
                 unit_sizes=None, key=None, device=None, dtype=None, _base=None):
        super().__init__(mask_init_percentage=mask_init_percentage, left_stretch=left_stretch,
                         right_stretch=right_stretch, temperature=temperature, ablation=ablation, mask_unit=mask_unit,
                         mask_bias=mask_bias, unit_sizes=unit_sizes, key=key, device=device, dtype=dtype, base=_base,
                         layer_args=dict(in_features=in_features, out_features=out_features, bias=bias))


class HardConcreteGPTConv1D(HardConcreteLayer):
    """GPT-2's ``Conv1D`` (weight (nx, nf)) with a hard-concrete mask."""

    _layer = GPT_CONV1D

    def __init__(self, nf: int, nx: int, ablation: str = "none", mask_unit: str = "weight", mask_bias: bool = False,
                 mask_init_percentage: float = MASK_INIT_PERCENTAGE, *, left_stretch: float = LEFT, right_stretch: float = RIGHT,
                 temperature: float = TEMPERATURE, unit_sizes=None, key=None, device=None, dtype=None, _base=None):
        super().__init__(mask_init_percentage=mask_init_percentage, left_stretch=left_stretch,
                         right_stretch=right_stretch, temperature=temperature, ablation=ablation, mask_unit=mask_unit,
                         mask_bias=mask_bias, unit_sizes=unit_sizes, key=key, device=device, dtype=dtype, base=_base,
                         layer_args=dict(nf=nf, nx=nx))


class _HardConcreteConv(HardConcreteLayer):
    def __init__(self, in_channels, out_channels, kernel_size, padding=0, stride=1, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", ablation="none", mask_unit="weight", mask_bias=False, mask_init_percentage=MASK_INIT_PERCENTAGE,
                 *, left_stretch=LEFT, right_stretch=RIGHT, temperature=TEMPERATURE, unit_sizes=None, key=None, device=None, dtype=None,
                 _base=None):
        super().__init__(mask_init_percentage=mask_init_percentage, left_stretch=left_stretch,
                         right_stretch=right_stretch, temperature=temperature, ablation=ablation, mask_unit=mask_unit,
                         mask_bias=mask_bias, unit_sizes=unit_sizes, key=key, device=device, dtype=dtype, base=_base,
                         layer_args=dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                                         padding=padding, stride=stride, dilation=dilation, groups=groups, bias=bias,
                                         padding_mode=padding_mode))


class HardConcreteConv1d(_HardConcreteConv):
    """``nn.Conv1d`` with a hard-concrete mask."""

    _layer = CONV1D


class HardConcreteConv2d(_HardConcreteConv):
    """``nn.Conv2d`` with a hard-concrete mask."""

    _layer = CONV2D
