"""The one mask-layer factory of the tests, seeded inputs, and the pure-function reference every
layer's forward must equal (not a test file; ``conftest.py`` exposes the factory as the
``make_layer`` fixture, hypothesis tests and parametrisations import it from here)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional.ablation import RANDOM_ABLATIONS
from neurosurgeon.functional.layer import noise_key

STRATEGIES = ("continuous_sparsification", "hard_concrete", "magnitude_pruning")
LEARNED = STRATEGIES[:2]  # the strategies with mask parameters
KINDS = ("linear", "gpt_conv1d", "conv1d", "conv2d")
ABLATIONS = tuple(F.ABLATIONS)
_PREFIX = {"continuous_sparsification": "ContSparse", "hard_concrete": "HardConcrete", "magnitude_pruning": "MagPrune"}
_SUFFIX = {"linear": "Linear", "gpt_conv1d": "GPTConv1D", "conv1d": "Conv1d", "conv2d": "Conv2d"}
#: kind -> (constructor arguments, input shape without the batch): 5 inputs or 2 channels in, 4 out
_SHAPES = {
    "linear": ((5, 4), (5,)),
    "gpt_conv1d": ((4, 5), (2, 5)),
    "conv1d": ((2, 4, 3), (2, 6)),
    "conv2d": ((2, 4, (3, 2)), (2, 5, 4)),
}
_BASES = {"linear": nn.Linear, "gpt_conv1d": Conv1D, "conv1d": nn.Conv1d, "conv2d": nn.Conv2d}


def layer_class(strategy: str, kind: str) -> type[ns.MaskLayer]:
    """The mask layer class of a strategy and a layer kind, e.g. ``HardConcreteConv2d``."""
    return getattr(ns, _PREFIX[strategy] + _SUFFIX[kind])


def cases(strategies=STRATEGIES, kinds=KINDS) -> list:
    """``(strategy, kind)`` parameters for ``pytest.mark.parametrize("strategy,kind", ...)``,
    with the class name as the test id."""
    return [pytest.param(s, k, id=layer_class(s, k).__name__) for s in strategies for k in kinds]


def strategy_and_kind(layer: nn.Module) -> tuple[str, str]:
    """``(strategy, kind)`` of a mask layer, read from its class name (not from its accessors)."""
    name = type(layer).__name__
    strategy = next(s for s, p in _PREFIX.items() if name.startswith(p))
    return strategy, next(k for k, s in _SUFFIX.items() if name == _PREFIX[strategy] + s)


def _seed_(tensor: torch.Tensor | None, g: torch.Generator, scale: float = 0.5) -> None:
    if tensor is not None and tensor.device.type != "meta":
        with torch.no_grad():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * scale)


def _small_subnetwork(shape, g: torch.Generator) -> torch.Tensor:
    """theta with a third of its entries (at least one) positive, all at least 0.25 from zero."""
    n = math.prod(shape)
    sign = -torch.ones(n)
    sign[torch.randperm(n, generator=g)[: max(1, n // 3)]] = 1.0
    return (sign * (0.25 + 1.5 * torch.rand(n, generator=g))).reshape(shape)


def make_layer(strategy: str, kind: str, *, mask_unit: str | None = None, mask_bias: bool = False,
               dtype: torch.dtype = torch.float32, device="cpu", key=0, seed: int = 0, subnetwork: bool = True,
               **kwargs) -> ns.MaskLayer:
    """A small ``strategy`` mask layer of ``kind`` built with its constructor (5 inputs or 2
    channels in, 4 out), with weights and bias drawn from ``seed``.

    Args:
        mask_unit: passed only when given (magnitude pruning takes none).
        subnetwork: True sets theta so a third of its units (at least one) are in the subnetwork
            and, for magnitude pruning, prunes 60% by default: h is non-trivial and complement
            sampling is legal. False keeps the mask parameters' initial values.
        kwargs: any other constructor argument (``ablation``, ``bias``, hyper-parameters), passed
            as is so that bad values reach the constructor.
    """
    if mask_unit is not None:
        kwargs["mask_unit"] = mask_unit
    if subnetwork and strategy == "magnitude_pruning":
        kwargs.setdefault("prune_percentage", 0.6)
    args = _SHAPES[kind][0]
    layer = layer_class(strategy, kind)(*args, mask_bias=mask_bias, key=key, dtype=dtype, device=device, **kwargs)
    g = torch.Generator().manual_seed(seed)
    _seed_(layer.weight, g)
    _seed_(layer.bias, g)
    if subnetwork and strategy != "magnitude_pruning" and layer.weight.device.type != "meta":
        with torch.no_grad():
            for p in layer.mask_tensors():
                if p is not None:
                    p.copy_(_small_subnetwork(p.shape, g))
    return layer


def base_layer(kind: str, dtype: torch.dtype = torch.float32, *, bias: bool = True, seed: int = 0) -> nn.Module:
    """The plain layer ``make_layer`` wraps (same shapes), seeded, for ``from_layer``."""
    args = _SHAPES[kind][0]
    layer = _BASES[kind](*args) if kind == "gpt_conv1d" else _BASES[kind](*args, bias=bias)
    g = torch.Generator().manual_seed(seed)
    _seed_(layer.weight, g)
    _seed_(layer.bias, g)
    return layer.to(dtype)


def example_input(layer: nn.Module, *, batch: int = 3, seed: int = 1) -> torch.Tensor:
    """A seeded input for a mask layer or a ``base_layer``, in its weight's dtype and device."""
    if isinstance(layer, ns.MaskLayer):
        kind = layer.layer_kind
    else:
        kind = next(k for k, base in _BASES.items() if type(layer) is base)
    x = torch.randn((batch, *_SHAPES[kind][1]), generator=torch.Generator().manual_seed(seed))
    return x.to(device=layer.weight.device, dtype=layer.weight.dtype)


def conv_args(layer: nn.Module) -> dict:
    """The convolution settings ``layer_forward`` needs (none for linear layers)."""
    names = ("stride", "padding", "dilation", "groups", "padding_mode")
    return {n: getattr(layer, n) for n in names if hasattr(layer, n)}


def reference(layer: ns.MaskLayer, x: torch.Tensor, *, noise_step: int | None = None):
    """``(output, MaskedParameters)`` of ``layer`` on ``x`` from the pure functions, with the
    layer's tensors, settings and key read through its public attributes: what its forward must
    return. ``noise_step``: the hard-concrete training step the forward drew (default: the
    layer's current step)."""
    strategy, kind = strategy_and_kind(layer)
    with torch.no_grad():
        if not layer.use_masks:
            p = F.MaskedParameters(layer.weight, layer.bias)
        else:
            if strategy == "magnitude_pruning":
                hard, wp, bp = True, layer.weight, (layer.bias if layer.mask_bias else None)
                hparams = {"prune_percentage": layer.prune_percentage}
                if hasattr(layer, "rule"):
                    hparams["rule"] = layer.rule
            else:
                wp, bp = layer.weight_mask_params, getattr(layer, "bias_mask_params", None)
                hard = not layer.training or not wp.requires_grad
                hparams = {"temperature": layer.temperature}
                if strategy == "hard_concrete":
                    hparams.update(left_stretch=layer.left_stretch, right_stretch=layer.right_stretch)
            if hard:
                key = layer.mask_key if layer.ablation in RANDOM_ABLATIONS else None
            elif strategy == "hard_concrete":
                key = noise_key(layer.mask_key, int(layer.noise_step) if noise_step is None else noise_step)
            else:
                key = None
            p = F.mask_parameters(layer.weight, layer.bias, wp, bp, key, strategy=strategy, kind=kind, hard=hard,
                                  ablation=layer.ablation, mask_unit=layer.mask_unit, unit_sizes=layer.unit_sizes,
                                  **hparams)
        return F.layer_forward(kind, x, p.weight, p.bias, **conv_args(layer)), p
