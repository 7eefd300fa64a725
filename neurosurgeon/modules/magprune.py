"""Magnitude-pruning layers (Frankle & Carbin 2019, arXiv 1803.03635): the non-differentiable
baseline. Reference: ``NeuroSurgeon.Masking.magprune_layer``.

The mask zeroes exactly round(p * n) entries of smallest |w|, the same in train and eval;
``rule="v0"`` gives NeuroSurgeon 0.1.0's masks instead (the most negative weights, a quantile
count: :func:`neurosurgeon.functional.magnitude.v0_magnitude_mask`). ``mask_unit`` is always
``weight``. There are no mask parameters.
"""

from __future__ import annotations

import torch.nn as nn

from ..functional.magnitude import PRUNE_PERCENTAGE, RULE, RULES, magnitude_mask_and_threshold
from ..functional._checks import check_choice, check_fraction, in_transform
from ._layer_types import CONV1D, CONV2D, GPT_CONV1D, LINEAR
from .mask_layer import MaskLayer

__all__ = ["MagPruneLayer", "MagPruneLinear", "MagPruneGPTConv1D", "MagPruneConv1d", "MagPruneConv2d"]


class MagPruneLayer(MaskLayer):
    """Abstract magnitude-pruning layer.

    Args (beyond :class:`MaskLayer`):
        prune_percentage: p in [0, 1], the fraction of entries pruned (default 0.2).
        rule: ``"abs"`` (default: exactly round(p * n) entries of smallest |w|) or ``"v0"``
            (NeuroSurgeon 0.1.0's masks: keep w >= the p-quantile of the signed values).
    """

    _strategy = "magnitude_pruning"

    def __init__(self, *, prune_percentage: float = PRUNE_PERCENTAGE, rule: str = RULE, **kwargs):
        self._prune_percentage = check_fraction("prune_percentage", prune_percentage)
        self._rule = check_choice("rule", rule, RULES)
        super().__init__(mask_unit="weight", **kwargs)

    def _make_weight_mask_params(self) -> None:
        self._thresholds = None  # the mask is a function of the weight itself

    def _make_bias_mask_params(self) -> None:
        pass

    def mask_tensors(self):
        return self.weight, (self.bias if self._mask_bias else None)

    def _is_hard(self) -> bool:
        return True

    def _hparams(self):
        return {"prune_percentage": self._prune_percentage, "rule": self._rule}

    def _subnetworks(self, wp, bp):
        # Finding the k-th |w| is a selection; checking that the last call's threshold still
        # splits the weight exactly is a few streaming passes. The check certifies itself (a
        # threshold that no longer splits exactly round(p * n) off is ignored), so an edited
        # weight can never get a stale mask. Under transforms nothing is kept.
        hints = self._thresholds or (None, None)
        out = [magnitude_mask_and_threshold(t, threshold_hint=hint, **self._hparams()) if t is not None else (None, None)
               for t, hint in zip((wp, bp), hints)]
        if not in_transform():
            self._thresholds = tuple(tau for _, tau in out)
        return tuple(h for h, _ in out)

    @property
    def mask_unit(self) -> str:
        return "weight"

    @mask_unit.setter
    def mask_unit(self, value: str) -> None:
        check_choice("mask_unit", value, ("weight",))

    @property
    def prune_percentage(self) -> float:
        return self._prune_percentage

    @prune_percentage.setter
    def prune_percentage(self, value: float) -> None:
        self._prune_percentage = check_fraction("prune_percentage", value)

    @property
    def rule(self) -> str:
        """``"abs"`` (the round(p * n) smallest |w|) or ``"v0"`` (NeuroSurgeon 0.1.0's signed quantile rule)."""
        return self._rule

    @rule.setter
    def rule(self, value: str) -> None:
        self._rule = check_choice("rule", value, RULES)

    @classmethod
    def from_layer(cls, layer: nn.Module, ablation: str = "none", mask_bias: bool = False,
                   prune_percentage: float = PRUNE_PERCENTAGE, *, rule: str = RULE, key=None):
        """Wrap an existing layer; the mask layer shares its ``weight`` and ``bias`` Parameters."""
        return cls._wrap(layer, key=key, ablation=ablation, mask_bias=mask_bias, prune_percentage=prune_percentage,
                         rule=rule)


class MagPruneLinear(MagPruneLayer):
    """``nn.Linear`` with a magnitude-pruning mask."""

    _layer = LINEAR

    def __init__(self, in_features: int, out_features: int, bias: bool = True, ablation: str = "none",
                 mask_bias: bool = False, prune_percentage: float = PRUNE_PERCENTAGE, *, rule: str = RULE, key=None,
                 device=None, dtype=None, _base=None):
        super().__init__(prune_percentage=prune_percentage, rule=rule, ablation=ablation, mask_bias=mask_bias, key=key,
                         device=device, dtype=dtype, base=_base,
                         layer_args=dict(in_features=in_features, out_features=out_features, bias=bias))


class MagPruneGPTConv1D(MagPruneLayer):
    """GPT-2's ``Conv1D`` (weight (nx, nf)) with a magnitude-pruning mask."""

    _layer = GPT_CONV1D

    def __init__(self, nf: int, nx: int, ablation: str = "none", mask_bias: bool = False,
                 prune_percentage: float = PRUNE_PERCENTAGE, *, rule: str = RULE, key=None, device=None, dtype=None,
                 _base=None):
        super().__init__(prune_percentage=prune_percentage, rule=rule, ablation=ablation, mask_bias=mask_bias, key=key,
                         device=device, dtype=dtype, base=_base, layer_args=dict(nf=nf, nx=nx))


class _MagPruneConv(MagPruneLayer):
    def __init__(self, in_channels, out_channels, kernel_size, padding=0, stride=1, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", ablation="none", mask_bias=False, prune_percentage=PRUNE_PERCENTAGE, *, rule=RULE,
                 key=None, device=None, dtype=None, _base=None):
        super().__init__(prune_percentage=prune_percentage, rule=rule, ablation=ablation, mask_bias=mask_bias, key=key,
                         device=device, dtype=dtype, base=_base,
                         layer_args=dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                                         padding=padding, stride=stride, dilation=dilation, groups=groups, bias=bias,
                                         padding_mode=padding_mode))


class MagPruneConv1d(_MagPruneConv):
    """``nn.Conv1d`` with a magnitude-pruning mask."""

    _layer = CONV1D


class MagPruneConv2d(_MagPruneConv):
    """``nn.Conv2d`` with a magnitude-pruning mask."""

    _layer = CONV2D
