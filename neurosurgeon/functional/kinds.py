"""One table of layer kinds: everything the library knows about a wrapped layer type.

| kind       | weight axes         | output axis | forward          | ``random_ablate``'s values | 0.1.0 name |
| linear     | (o, i)              | 0           | ``F.linear``     | kaiming-uniform (a = sqrt 5) | Linear     |
| gpt_conv1d | (i, o)              | 1           | ``x @ W + b``    | N(0, 0.02), bias 0         | GPTConv1D  |
| conv1d     | (o, i/g, k)         | 0           | ``F.conv1d``     | kaiming-uniform (a = sqrt 5) | Conv1d     |
| conv2d     | (o, i/g, kh, kw)    | 0           | ``F.conv2d``     | kaiming-uniform (a = sqrt 5) | Conv2d     |

The output axis is the bias's axis and the one a ``neuron`` unit keeps; the fan-in of a weight
is its size over every other axis (as ``torch.nn.init`` computes it). Adding a layer kind is
adding a row here and, for the module shells, one in :mod:`neurosurgeon.modules._layer_types`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import forwards
from ._checks import table_row

__all__ = ["LayerKind", "KINDS", "kind_row", "layer_forward", "fan_in"]


class LayerKind(NamedTuple):
    """One row of :data:`KINDS`."""

    axes: str  # einops names of the weight's axes, in storage order
    out_axis: int  # the axis of output units: the bias's, and the one a neuron unit keeps
    forward: Callable[..., torch.Tensor]  # forward(x, weight, bias, **conv_args)
    init: str  # how random_ablate draws fresh values: a row of neurosurgeon.functional.reinit.INITS
    v0_name: str  # the suffix of NeuroSurgeon 0.1.0's class names (ContSparse<v0_name>)

    @property
    def dims(self) -> int:
        return len(self.axes.split())


KINDS: dict[str, LayerKind] = {
    "linear": LayerKind("o i", 0, forwards.linear, "kaiming_uniform", "Linear"),
    "gpt_conv1d": LayerKind("i o", 1, forwards.gpt_conv1d, "gpt2_normal", "GPTConv1D"),
    "conv1d": LayerKind("o i k", 0, forwards.conv1d, "kaiming_uniform", "Conv1d"),
    "conv2d": LayerKind("o i kh kw", 0, forwards.conv2d, "kaiming_uniform", "Conv2d"),
}


def kind_row(kind: str) -> LayerKind:
    """The row of ``kind``; ValueError (TypeError for a non-str) naming the kinds otherwise."""
    return table_row("kind", kind, KINDS)


def layer_forward(kind: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, **conv_args):
    """The forward of a ``kind`` layer with explicit weights (conv arguments only for convolutions).

    Example:
        >>> layer_forward("gpt_conv1d", torch.ones(2, 3), torch.ones(3, 4), None).shape
        torch.Size([2, 4])
    """
    return kind_row(kind).forward(x, weight, bias, **conv_args)


def fan_in(kind: str, weight_shape: tuple[int, ...]) -> int:
    """Inputs feeding one output unit, as ``torch.nn.init`` computes it: the weight's size over
    every axis but the output axis."""
    out = kind_row(kind).out_axis
    shape = tuple(weight_shape)
    return int(math.prod(shape[:out] + shape[out + 1:]))
