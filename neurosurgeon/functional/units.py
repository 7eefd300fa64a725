"""Mask-unit shapes: one mask entry per weight, or one per output unit (SPEC section 1).

| layer kind   | weight shape            | "weight"    | "neuron"        |
| linear       | (out, in)               | (out, in)   | (out, 1)        |
| gpt_conv1d   | (in, out)               | (in, out)   | (1, out)        |
| conv1d       | (out, in/groups, k)     | same        | (out, 1, 1)     |
| conv2d       | (out, in/groups, kh, kw)| same        | (out, 1, 1, 1)  |

A mask of the unit shape broadcasts against the weight.
"""

from __future__ import annotations

import math

from ._checks import LAYER_KINDS, MASK_UNITS, check_choice

__all__ = ["mask_shape", "out_dim", "fan_in"]


def out_dim(kind: str) -> int:
    """The weight dimension that indexes output units (GPT-2's Conv1D stores the transpose)."""
    check_choice("kind", kind, LAYER_KINDS)
    return 1 if kind == "gpt_conv1d" else 0


def mask_shape(kind: str, weight_shape: tuple[int, ...], mask_unit: str) -> tuple[int, ...]:
    """Shape of the mask parameters for a weight of ``weight_shape``."""
    check_choice("mask_unit", mask_unit, MASK_UNITS)
    weight_shape = tuple(weight_shape)
    if mask_unit == "weight":
        return weight_shape
    d = out_dim(kind)
    return tuple(s if i == d else 1 for i, s in enumerate(weight_shape))


def fan_in(kind: str, weight_shape: tuple[int, ...]) -> int:
    """Inputs feeding one output unit, as ``torch.nn.init`` computes it."""
    check_choice("kind", kind, LAYER_KINDS)
    if kind == "gpt_conv1d":
        return int(weight_shape[0])
    return int(math.prod(weight_shape[1:]))
