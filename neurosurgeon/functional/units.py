"""Mask units as einops patterns: which weights one mask entry gates.

A unit is an einops reduction from the weight's axes to the mask's axes; theta has the reduced
shape and its mask is broadcast back over the weights it gates (``einops.repeat``). Named units
are rows of :data:`NAMED_UNITS`, derived from each layer kind's weight axes (:mod:`.kinds`):

| kind       | weight            | "weight"            | "neuron" (one entry per output unit) |
| linear     | (out, in)         | ``o i -> o i``      | ``o i -> o 1``                       |
| gpt_conv1d | (in, out)         | ``i o -> i o``      | ``i o -> 1 o``                       |
| conv1d     | (out, in/g, k)    | ``o i k -> o i k``  | ``o i k -> o 1 1``                   |
| conv2d     | (out, in/g, h, w) | ``o i kh kw -> ...``| ``o i kh kw -> o 1 1 1``             |

Any other pattern works too, with the sizes of split axes in ``unit_sizes``: the heads of a
query projection (``nn.Linear``, weight (h d, in)) are ``"(h d) i -> h"`` with ``{"h": 12}``;
GPT-2's fused ``c_attn`` (``Conv1D``, weight (in, 3 h d)) is ``"i (qkv h d) -> qkv h"``.

A unit is resolved once against a weight's shape (:func:`resolve_unit`, which raises on any
misfit); the kernels (:func:`expand`, :func:`reduce`) then never parse or check strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

import einops
import torch

from .kinds import LayerKind, kind_row

__all__ = ["MaskUnit", "resolve_unit", "unit_shape", "expand_mask", "reduce_mask", "NAMED_UNITS"]

#: Named units, one row each: the mask's axes for a layer kind's row (its weight axes, ``o i`` for a
#: Linear). A name is a shorthand for the pattern ``"<weight axes> -> <mask axes>"``.
NAMED_UNITS: dict[str, Callable[[LayerKind], str]] = {
    "weight": lambda kind: kind.axes,  # one entry per weight
    # one entry per output unit: the output axis kept, every other axis of size 1
    "neuron": lambda kind: " ".join(a if i == kind.out_axis else "1" for i, a in enumerate(kind.axes.split())),
}


class MaskUnit(NamedTuple):
    """A mask unit resolved against one weight shape.

    Attributes:
        name: what the user gave: ``"weight"``, ``"neuron"`` or the pattern.
        pattern: the einops pattern ``"weight axes -> mask axes"``.
        sizes: every named axis of the weight side and its size.
        weight_shape: the weight's shape.
        shape: theta's shape.
        aligned: the mask has the weight's axes (size 1 where a unit spans one), so broadcasting
            does the repeat.
    """

    name: str
    pattern: str
    sizes: tuple[tuple[str, int], ...]
    weight_shape: tuple[int, ...]
    shape: tuple[int, ...]
    aligned: bool


def unit_pattern(kind: str, mask_unit: str) -> str:
    """The einops pattern of ``mask_unit`` for a ``kind`` layer (a pattern is returned as given)."""
    row = kind_row(kind)
    if not isinstance(mask_unit, str):
        raise TypeError(f"mask_unit must be one of {list(NAMED_UNITS)} or an einops pattern (str), got {mask_unit!r} "
                        f"({type(mask_unit).__name__})")
    if mask_unit in NAMED_UNITS:
        return f"{row.axes} -> {NAMED_UNITS[mask_unit](row)}"
    if mask_unit.count("->") != 1:
        raise ValueError(f"mask_unit must be one of {list(NAMED_UNITS)} or an einops pattern 'weight axes -> mask axes', "
                         f"got {mask_unit!r}")
    return mask_unit


def _groups(side: str) -> list[str]:
    """The top-level axis groups of one side of a pattern: ``"(h d) i"`` -> ``["(h d)", "i"]``."""
    return re.findall(r"\([^)]*\)|\S+", side)


def _check_sizes(unit_sizes) -> dict[str, int]:
    if unit_sizes is None:
        return {}
    if not isinstance(unit_sizes, Mapping):
        raise TypeError(f"unit_sizes must be a dict of axis name -> int, got {type(unit_sizes).__name__}")
    for name, size in unit_sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"unit_sizes[{name!r}] must be an int >= 1, got {size!r}")
    return dict(unit_sizes)


def resolve_unit(kind: str, weight_shape, mask_unit: str = "weight",
                 unit_sizes: Mapping[str, int] | None = None) -> MaskUnit:
    """Check ``mask_unit`` against a ``kind`` weight of ``weight_shape`` once, for the kernels.

    Raises:
        TypeError: ``mask_unit`` is not a str, ``unit_sizes`` not a mapping.
        ValueError: naming the pattern, the weight's shape and einops' reason when they do not fit.
    """
    pattern = unit_pattern(kind, mask_unit)
    given = _check_sizes(unit_sizes)
    weight_shape = tuple(int(s) for s in weight_shape)
    lhs, rhs = (side.strip() for side in pattern.split("->"))
    names = re.findall(r"[A-Za-z_]\w*", lhs)
    meta = torch.empty(weight_shape, device="meta")
    try:
        shape = tuple(einops.reduce(meta, pattern, "max", **given).shape)
        # Every weight-side axis sized by einops itself: the sizes einops.repeat needs to go back.
        spread = " ".join(names) + (" ..." if "..." in lhs else "")
        sizes = tuple(zip(names, einops.rearrange(meta, f"{lhs} -> {spread}", **given).shape))
    except einops.EinopsError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"mask_unit pattern {pattern!r} does not fit a weight of shape {weight_shape}"
                         f" with unit_sizes {given}: {reason}") from None
    left, right = _groups(lhs), _groups(rhs)
    aligned = len(left) == len(right) and all(r in ("1", "()", g) for g, r in zip(left, right))
    return MaskUnit(mask_unit, pattern, sizes, weight_shape, shape, aligned)


def expand(mask: torch.Tensor, unit: MaskUnit) -> torch.Tensor:
    """A unit-shaped mask broadcast back over the weights it gates (kernel: ``unit`` is resolved)."""
    if unit.aligned:
        return mask  # same axes as the weight, size 1 where a unit spans the axis: it broadcasts
    lhs, rhs = unit.pattern.split("->")
    return einops.repeat(mask, f"{rhs} -> {lhs}", **dict(unit.sizes))


def reduce(mask: torch.Tensor, unit: MaskUnit) -> torch.Tensor:
    """A weight-shaped mask of whole units back at theta's shape (kernel: ``unit`` is resolved).
    Every weight of a unit carries the unit's value, so the maximum over the unit is that value."""
    return einops.reduce(mask.expand(unit.weight_shape), unit.pattern, "max", **dict(unit.sizes))


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
    return resolve_unit(kind, weight_shape, mask_unit, unit_sizes).shape


def expand_mask(mask: torch.Tensor, weight_shape, mask_unit: str = "weight",
                unit_sizes: Mapping[str, int] | None = None, *, kind: str = "linear") -> torch.Tensor:
    """A unit-shaped mask broadcast back over the weights it gates.

    A mask whose shape already broadcasts against the weight (the named units, and patterns
    such as ``"o i -> o 1"``) is returned as it is; any other pattern is expanded with
    ``einops.repeat`` to the weight's shape. :func:`reduce_mask` is its inverse.

    Example:
        >>> expand_mask(torch.tensor([1.0, 0.0]), (4, 3), "(h d) i -> h", {"h": 2})
        tensor([[1., 1., 1.],
                [1., 1., 1.],
                [0., 0., 0.],
                [0., 0., 0.]])
    """
    return expand(mask, resolve_unit(kind, weight_shape, mask_unit, unit_sizes))


def reduce_mask(mask: torch.Tensor, weight_shape, mask_unit: str = "weight",
                unit_sizes: Mapping[str, int] | None = None, *, kind: str = "linear") -> torch.Tensor:
    """The per-unit mask (theta's shape) of a mask at the weight's shape: the inverse of
    :func:`expand_mask`, e.g. the heads of a ``MaskedParameters.weight_mask``.

    Example:
        >>> m = expand_mask(torch.tensor([1.0, 0.0]), (4, 3), "(h d) i -> h", {"h": 2})
        >>> reduce_mask(m, (4, 3), "(h d) i -> h", {"h": 2})
        tensor([1., 0.])
    """
    return reduce(mask, resolve_unit(kind, weight_shape, mask_unit, unit_sizes))
