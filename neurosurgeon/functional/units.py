"""Mask units as einops patterns: which weights one mask entry gates.

A unit is an einops reduction from the weight's axes to the mask's axes; theta has the reduced
shape and its mask is broadcast back over the weights it gates (``einops.repeat``). Two units
are named, one pattern per layer kind:

| kind       | weight            | "weight"            | "neuron" (one entry per output unit) |
| linear     | (out, in)         | ``o i -> o i``      | ``o i -> o 1``                       |
| gpt_conv1d | (in, out)         | ``i o -> i o``      | ``i o -> 1 o``                       |
| conv1d     | (out, in/g, k)    | ``o i k -> o i k``  | ``o i k -> o 1 1``                   |
| conv2d     | (out, in/g, h, w) | ``o i h w -> ...``  | ``o i h w -> o 1 1 1``               |

Any other pattern works too, with the sizes of split axes in ``unit_sizes``: the heads of a
query projection (``nn.Linear``, weight (h d, in)) are ``"(h d) i -> h"`` with ``{"h": 12}``;
GPT-2's fused ``c_attn`` (``Conv1D``, weight (in, 3 h d)) is ``"i (qkv h d) -> qkv h"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import einops
import torch
from einops.parsing import ParsedExpression

from ._checks import LAYER_KINDS, check_choice

__all__ = ["unit_shape", "expand_mask"]

_AXES = {"linear": "o i", "gpt_conv1d": "i o", "conv1d": "o i k", "conv2d": "o i kh kw"}
_NEURON = {"linear": "o 1", "gpt_conv1d": "1 o", "conv1d": "o 1 1", "conv2d": "o 1 1 1"}
NAMED_UNITS = ("weight", "neuron")


def unit_pattern(kind: str, mask_unit: str) -> str:
    """The einops pattern of ``mask_unit`` for a ``kind`` layer (a pattern is returned as given)."""
    check_choice("kind", kind, LAYER_KINDS)
    if not isinstance(mask_unit, str):
        raise TypeError(f"mask_unit must be 'weight', 'neuron' or an einops pattern (str), got {mask_unit!r}")
    if mask_unit == "weight":
        return f"{_AXES[kind]} -> {_AXES[kind]}"
    if mask_unit == "neuron":
        return f"{_AXES[kind]} -> {_NEURON[kind]}"
    if "->" not in mask_unit:
        raise ValueError(f"mask_unit must be 'weight', 'neuron' or an einops pattern 'weight axes -> mask axes', "
                         f"got {mask_unit!r}")
    return mask_unit


def _sizes(unit_sizes: Mapping[str, int] | None) -> dict[str, int]:
    if unit_sizes is None:
        return {}
    if not isinstance(unit_sizes, Mapping):
        raise TypeError(f"unit_sizes must be a dict of axis name -> int, got {type(unit_sizes).__name__}")
    return dict(unit_sizes)


def unit_shape(weight_shape, mask_unit: str = "weight", unit_sizes: Mapping[str, int] | None = None, *,
               kind: str = "linear") -> tuple[int, ...]:
    """Shape of theta for a weight of ``weight_shape`` masked by ``mask_unit``.

    Raises:
        ValueError: naming the pattern, the weight's shape and einops' reason when they do not fit.

    Example:
        >>> unit_shape((768, 768), "(h d) i -> h", {"h": 12})
        (12,)
        >>> unit_shape((768, 2304), "neuron", kind="gpt_conv1d")
        (1, 2304)
    """
    pattern = unit_pattern(kind, mask_unit)
    weight_shape = tuple(int(s) for s in weight_shape)
    try:
        return tuple(einops.reduce(torch.empty(weight_shape, device="meta"), pattern, "max", **_sizes(unit_sizes)).shape)
    except einops.EinopsError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"mask_unit pattern {pattern!r} does not fit a weight of shape {weight_shape}"
                         f" with unit_sizes {_sizes(unit_sizes)}: {reason}") from None


def _axis_sizes(lhs: str, weight_shape: tuple[int, ...], given: dict[str, int]) -> dict[str, int]:
    """Every named axis of the weight side of a pattern, sized from the weight's shape."""
    sizes = dict(given)
    for group, dim in zip(ParsedExpression(lhs).composition, weight_shape):
        names = [a for a in group if isinstance(a, str)]
        unknown = [a for a in names if a not in sizes]
        if len(unknown) == 1:
            known = math.prod(sizes[a] for a in names if a in sizes)
            sizes[unknown[0]] = dim // known
    return sizes


def expand_mask(mask: torch.Tensor, weight_shape, mask_unit: str = "weight",
                unit_sizes: Mapping[str, int] | None = None, *, kind: str = "linear") -> torch.Tensor:
    """A unit-shaped mask broadcast back over the weights it gates.

    A mask whose shape already broadcasts against the weight (the named units) is returned as
    it is; any other pattern is expanded with ``einops.repeat`` to the weight's shape.

    Example:
        >>> expand_mask(torch.tensor([1.0, 0.0]), (4, 3), "(h d) i -> h", {"h": 2})
        tensor([[1., 1., 1.],
                [1., 1., 1.],
                [0., 0., 0.],
                [0., 0., 0.]])
    """
    weight_shape = tuple(int(s) for s in weight_shape)
    if mask_unit in NAMED_UNITS:
        return mask  # same axes as the weight, size 1 where a unit spans the axis: it broadcasts
    lhs, rhs = (side.strip() for side in unit_pattern(kind, mask_unit).split("->"))
    left, right = ParsedExpression(lhs).composition, ParsedExpression(rhs).composition
    if len(left) == len(right) and all(r == [] or r == g for g, r in zip(left, right)):
        return mask  # an aligned pattern such as "o i -> o 1": broadcasting does the repeat
    return einops.repeat(mask, f"{rhs} -> {lhs}", **_axis_sizes(lhs, weight_shape, _sizes(unit_sizes)))


def fan_in(kind: str, weight_shape: tuple[int, ...]) -> int:
    """Inputs feeding one output unit, as ``torch.nn.init`` computes it."""
    check_choice("kind", kind, LAYER_KINDS)
    if kind == "gpt_conv1d":
        return int(weight_shape[0])
    return int(math.prod(weight_shape[1:]))
