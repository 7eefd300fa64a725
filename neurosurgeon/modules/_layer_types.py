"""The module side of the layer-kind table: for each kind of :data:`neurosurgeon.functional.KINDS`,
the torch class it wraps, its constructor's arguments, and how to make, initialise and bake it.

The mask layers hold one of these descriptors; the masking itself is layer-independent. Every
other table of layer types (the supported types of model surgery, the mask classes) is derived
from :data:`LAYER_TYPES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair, _single
from transformers.pytorch_utils import Conv1D

from ..functional._checks import PADDING_MODES, check_choice, check_positive_int
from ..functional.kinds import KINDS

#: A constructor argument without a default.
REQUIRED = object()


class UnsupportedLayerError(ValueError, TypeError):
    """A layer of a type no mask layer wraps: a ValueError, as NeuroSurgeon 0.1.0 raised, and a
    TypeError, as the wrong type of an argument is."""


class LayerType:
    """Describes one base layer type: ``kind`` for the functional core, the torch class it
    wraps, its constructor's arguments (in order, with defaults), the attribute names of its
    configuration, and how to make and initialise it."""

    kind: str
    base: type
    config: tuple[str, ...]
    arguments: tuple[tuple[str, Any], ...]
    bias: bool = True  # whether a layer built without a "bias" argument has one

    def configure(self, module: nn.Module, **args: Any) -> None:
        for name in self.config:
            setattr(module, name, args[name])

    def shapes(self, module: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(weight shape, bias shape)."""
        raise NotImplementedError

    def config_from(self, layer: nn.Module) -> dict[str, Any]:
        """Constructor arguments that rebuild ``layer``'s configuration."""
        args = {name: getattr(layer, name) for name in self.config}
        if "bias" in dict(self.arguments):
            args["bias"] = layer.bias is not None
        return args

    def reset(self, module: nn.Module) -> None:
        """Initialise weight and bias as the base class does (uses torch's global RNG, like torch)."""
        raise NotImplementedError

    def forward(self, module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        return KINDS[self.kind].forward(x, weight, bias)

    def bake(self, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        """A plain base-class layer holding the given weight and bias."""
        raise NotImplementedError


class _Linear(LayerType):
    kind, base, config = "linear", nn.Linear, ("in_features", "out_features")
    arguments = (("in_features", REQUIRED), ("out_features", REQUIRED), ("bias", True))

    def configure(self, m, **args):
        for name in self.config:
            check_positive_int(name, args[name], allow_zero=True)  # nn.Linear allows 0 features
        super().configure(m, **args)

    def shapes(self, m):
        return (m.out_features, m.in_features), (m.out_features,)

    def reset(self, m):
        nn.Linear.reset_parameters(m)

    def bake(self, m, weight, bias):
        layer = nn.Linear(m.in_features, m.out_features, bias=bias is not None, device="meta")
        layer.weight, layer.bias = nn.Parameter(weight), None if bias is None else nn.Parameter(bias)
        return layer


class _GPTConv1D(LayerType):
    kind, base, config = "gpt_conv1d", Conv1D, ("nf", "nx")
    arguments = (("nf", REQUIRED), ("nx", REQUIRED))

    def configure(self, m, **args):
        for name in self.config:
            check_positive_int(name, args[name], allow_zero=True)
        super().configure(m, **args)

    def shapes(self, m):
        return (m.nx, m.nf), (m.nf,)

    def reset(self, m):
        # transformers.pytorch_utils.Conv1D: weight N(0, 0.02), bias zeros.
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)

    def bake(self, m, weight, bias):
        with torch.device("meta"):  # no allocation, and no draw from torch's global RNG
            layer = Conv1D(m.nf, m.nx)
        layer.weight = nn.Parameter(weight)
        layer.bias = nn.Parameter(bias if bias is not None else torch.zeros(m.nf, dtype=weight.dtype, device=weight.device))
        return layer


class _ConvNd(LayerType):
    config = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
    # NeuroSurgeon 0.1.0's order: padding before stride
    arguments = (("in_channels", REQUIRED), ("out_channels", REQUIRED), ("kernel_size", REQUIRED), ("padding", 0),
                 ("stride", 1), ("dilation", 1), ("groups", 1), ("bias", True), ("padding_mode", "zeros"))

    def __init__(self, kind: str, base: type, tup):
        self.kind, self.base, self._tup = kind, base, tup

    def configure(self, m, **args):
        check_choice("padding_mode", args["padding_mode"], PADDING_MODES)
        for name in ("in_channels", "out_channels", "groups"):
            v = args[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if args["in_channels"] % args["groups"] or args["out_channels"] % args["groups"]:
            raise ValueError(
                f"in_channels ({args['in_channels']}) and out_channels ({args['out_channels']}) "
                f"must be divisible by groups ({args['groups']})"
            )
        for name in ("kernel_size", "stride", "dilation"):
            args[name] = self._tup(args[name])
            for v in args[name]:
                check_positive_int(name, v)
        if isinstance(args["padding"], str):
            check_choice("padding", args["padding"], ("same", "valid"))
        else:
            args["padding"] = self._tup(args["padding"])
            for v in args["padding"]:
                check_positive_int("padding", v, allow_zero=True)
        super().configure(m, **args)

    def shapes(self, m):
        return (m.out_channels, m.in_channels // m.groups, *m.kernel_size), (m.out_channels,)

    def reset(self, m):
        # torch's own initialiser reads only .weight and .bias: kaiming-uniform(a=sqrt(5)) weight,
        # U(+-1/sqrt(fan_in)) bias.
        nn.modules.conv._ConvNd.reset_parameters(m)

    def conv_args(self, m) -> dict[str, Any]:
        return dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups, padding_mode=m.padding_mode)

    def forward(self, m, x, weight, bias):
        return KINDS[self.kind].forward(x, weight, bias, **self.conv_args(m))

    def bake(self, m, weight, bias):
        layer = self.base(
            m.in_channels, m.out_channels, m.kernel_size, bias=bias is not None, device="meta", **self.conv_args(m)
        )
        layer.weight, layer.bias = nn.Parameter(weight), None if bias is None else nn.Parameter(bias)
        return layer


#: kind -> its module-side descriptor, one per row of the layer-kind table.
LAYER_TYPES: dict[str, LayerType] = {t.kind: t for t in (_Linear(), _GPTConv1D(), _ConvNd("conv1d", nn.Conv1d, _single),
                                                         _ConvNd("conv2d", nn.Conv2d, _pair))}


class _SupportedLayers(Mapping):
    """The torch classes the mask layers wrap -> their kind: a live view of :data:`LAYER_TYPES`,
    so a row added there is supported everywhere. Matched by exact type: a subclass may compute
    something else with its weight."""

    def __getitem__(self, base: type) -> str:
        for kind, layer_type in LAYER_TYPES.items():
            if layer_type.base is base:
                return kind
        raise KeyError(base)

    def __iter__(self):
        return (layer_type.base for layer_type in LAYER_TYPES.values())

    def __len__(self) -> int:
        return len(LAYER_TYPES)

    def __repr__(self) -> str:
        return repr(dict(self))


SUPPORTED_LAYERS: Mapping[type, str] = _SupportedLayers()
