"""Continuous sparsification layers (Savarese et al. 2020, arXiv 1912.04427).

Reference: ``NeuroSurgeon.Masking.contsparse_layer``. The mask is sigma(beta * theta) while
training and 1[theta > 0] when hard; see :mod:`neurosurgeon.functional.continuous_sparsification`.
"""

from __future__ import annotations

import torch.nn as nn

from ..functional.continuous_sparsification import MASK_INIT_VALUE, TEMPERATURE
from ..functional._checks import check_finite, check_temperature
from ._layer_types import CONV1D, CONV2D, GPT_CONV1D, LINEAR
from .mask_layer import MaskLayer
from .tempered import TemperedMixin

__all__ = ["ContSparseLayer", "ContSparseLinear", "ContSparseGPTConv1D", "ContSparseConv1d", "ContSparseConv2d"]


class ContSparseLayer(TemperedMixin, MaskLayer):
    """Abstract continuous-sparsification layer.

    Args (beyond :class:`MaskLayer`):
        mask_init_value: initial theta (default 0.0).
        temperature: beta (default 1.0), finite and > 0; anneal it upward during training
            (:class:`neurosurgeon.TemperatureSchedule`).
    """

    _strategy = "continuous_sparsification"

    def __init__(self, *, mask_init_value: float = MASK_INIT_VALUE, temperature: float = TEMPERATURE, **kwargs):
        self._mask_init_value = check_finite("mask_init_value", mask_init_value)
        self._temperature = check_temperature(temperature)
        super().__init__(**kwargs)

    def _init_hparams(self):
        return {"mask_init_value": self._mask_init_value}

    def _hparams(self):
        return {"temperature": self._temperature}

    @property
    def mask_init_value(self) -> float:
        return self._mask_init_value

    @mask_init_value.setter
    def mask_init_value(self, value: float) -> None:
        self._mask_init_value = check_finite("mask_init_value", value)

    @classmethod
    def from_layer(cls, layer: nn.Module, ablation: str = "none", mask_unit: str = "weight", mask_bias: bool = False,
                   mask_init_value: float = MASK_INIT_VALUE, *, temperature: float = TEMPERATURE, unit_sizes=None, key=None):
        """Wrap an existing layer; the mask layer shares its ``weight`` and ``bias`` Parameters."""
        return cls._wrap(layer, key=key, ablation=ablation, mask_unit=mask_unit, unit_sizes=unit_sizes, mask_bias=mask_bias,
                         mask_init_value=mask_init_value, temperature=temperature)


class ContSparseLinear(ContSparseLayer):
    """``nn.Linear`` with a continuous-sparsification mask."""

    _layer = LINEAR

    def __init__(self, in_features: int, out_features: int, bias: bool = True, ablation: str = "none",
                 mask_unit: str = "weight", mask_bias: bool = False, mask_init_value: float = MASK_INIT_VALUE, *,
                 temperature: float = TEMPERATURE, unit_sizes=None, key=None, device=None, dtype=None, _base=None):
        super().__init__(mask_init_value=mask_init_value, temperature=temperature, ablation=ablation,
                         mask_unit=mask_unit, mask_bias=mask_bias, unit_sizes=unit_sizes, key=key, device=device, dtype=dtype, base=_base,
                         layer_args=dict(in_features=in_features, out_features=out_features, bias=bias))


class ContSparseGPTConv1D(ContSparseLayer):
    """GPT-2's ``Conv1D`` (weight (nx, nf)) with a continuous-sparsification mask."""

    _layer = GPT_CONV1D

    def __init__(self, nf: int, nx: int, ablation: str = "none", mask_unit: str = "weight", mask_bias: bool = False,
                 mask_init_value: float = MASK_INIT_VALUE, *, temperature: float = TEMPERATURE, unit_sizes=None, key=None, device=None, dtype=None, _base=None):
        super().__init__(mask_init_value=mask_init_value, temperature=temperature, ablation=ablation,
                         mask_unit=mask_unit, mask_bias=mask_bias, unit_sizes=unit_sizes, key=key, device=device, dtype=dtype, base=_base,
                         layer_args=dict(nf=nf, nx=nx))


class _ContSparseConv(ContSparseLayer):
    def __init__(self, in_channels, out_channels, kernel_size, padding=0, stride=1, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", ablation="none", mask_unit="weight", mask_bias=False, mask_init_value=MASK_INIT_VALUE, *,
                 temperature=TEMPERATURE, unit_sizes=None, key=None, device=None, dtype=None, _base=None):
        super().__init__(mask_init_value=mask_init_value, temperature=temperature, ablation=ablation,
                         mask_unit=mask_unit, mask_bias=mask_bias, unit_sizes=unit_sizes, key=key, device=device, dtype=dtype, base=_base,
                         layer_args=dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                                         padding=padding, stride=stride, dilation=dilation, groups=groups, bias=bias,
                                         padding_mode=padding_mode))


class ContSparseConv1d(_ContSparseConv):
    """``nn.Conv1d`` with a continuous-sparsification mask."""

    _layer = CONV1D


class ContSparseConv2d(_ContSparseConv):
    """``nn.Conv2d`` with a continuous-sparsification mask."""

    _layer = CONV2D
