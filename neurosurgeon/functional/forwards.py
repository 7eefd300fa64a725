"""Layer forwards with explicit (possibly masked) weights, so masks compose without modules.

Each function is the base layer's computation with ``weight``/``bias`` supplied by the caller;
the layer-kind table (:mod:`.kinds`) names one per kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair, _single

from ._checks import PADDING_MODES, check_choice

__all__ = ["linear", "gpt_conv1d", "conv1d", "conv2d"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` with weight (out, in) (``nn.Linear``)."""
    return F.linear(x, weight, bias)


def gpt_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """GPT-2's ``Conv1D``: ``x @ weight + bias`` with weight (in, out)."""
    out_shape = x.shape[:-1] + (weight.shape[1],)
    flat = x.reshape(-1, x.shape[-1])
    y = torch.addmm(bias, flat, weight) if bias is not None else flat @ weight
    return y.reshape(out_shape)


def _conv(fn, n: int, x, weight, bias, stride, padding, dilation, groups, padding_mode):
    check_choice("padding_mode", padding_mode, PADDING_MODES)
    tup = _single if n == 1 else _pair
    if padding_mode != "zeros":
        # F.pad takes the last dimension first; as nn.Conv*d does, "same" puts the odd extra
        # element on the right.
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or int(s), got {padding!r}")
            pairs = [(0, 0)] * n
            if padding == "same":
                pairs = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                         for d, k in zip(tup(dilation), weight.shape[2:])]
        else:
            pairs = [(p, p) for p in tup(padding)]
        pads = tuple(v for pair in reversed(pairs) for v in pair)
        return fn(F.pad(x, pads, mode=padding_mode), weight, bias, tup(stride), tup(0), tup(dilation), groups)
    pad = padding if isinstance(padding, str) else tup(padding)
    return fn(x, weight, bias, tup(stride), pad, tup(dilation), groups)


def conv1d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """``nn.Conv1d``'s forward with explicit weights, every ``padding_mode`` included."""
    return _conv(F.conv1d, 1, x, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """``nn.Conv2d``'s forward with explicit weights, every ``padding_mode`` included."""
    return _conv(F.conv2d, 2, x, weight, bias, stride, padding, dilation, groups, padding_mode)
