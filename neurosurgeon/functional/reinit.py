"""Fresh values for ``random_ablate``: drawn like the layer's own initialisation, from a key.

Each layer kind names one row of :data:`INITS`:

- ``kaiming_uniform`` (``nn.Linear``, ``nn.Conv*d``): kaiming-uniform with a = sqrt(5) (He et al.
  2015), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases U(+-1/sqrt(fan_in))
  (``nn.Linear.reset_parameters``).
- ``gpt2_normal`` (GPT-2's ``Conv1D``): weights N(0, 0.02); bias 0 (``transformers.pytorch_utils.Conv1D``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from . import random as nr
from .kinds import fan_in, kind_row

__all__ = ["INITS", "Init", "reinit_weight", "reinit_bias"]


def _bound(fan: int) -> float:
    return 1.0 / math.sqrt(fan) if fan > 0 else 0.0


def _uniform(key: torch.Tensor, like: torch.Tensor, fan: int) -> torch.Tensor:
    b = _bound(fan)
    return nr.uniform(key, tuple(like.shape), dtype=torch.float32, minval=-b, maxval=b)


class Init(NamedTuple):
    """``weight(key, weight, fan_in)`` and ``bias(key, bias, fan_in)``: float32 draws of the
    parameter's shape (cast to the parameter's dtype and device by the caller)."""

    weight: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    bias: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


INITS: dict[str, Init] = {
    "kaiming_uniform": Init(weight=_uniform, bias=_uniform),
    "gpt2_normal": Init(weight=lambda key, w, fan: nr.normal(key, tuple(w.shape), dtype=torch.float32, std=0.02),
                        bias=lambda key, b, fan: torch.zeros(tuple(b.shape), dtype=torch.float32)),
}


def reinit_weight(key: torch.Tensor, kind: str, weight: torch.Tensor) -> torch.Tensor:
    """A freshly initialised weight like ``weight`` (shape, dtype, device), drawn from ``key``."""
    r = INITS[kind_row(kind).init].weight(key, weight, fan_in(kind, tuple(weight.shape)))
    return r.to(device=weight.device, dtype=weight.dtype)


def reinit_bias(key: torch.Tensor, kind: str, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A freshly initialised bias like ``bias``; its bound depends on the weight's fan-in."""
    r = INITS[kind_row(kind).init].bias(key, bias, fan_in(kind, tuple(weight.shape)))
    return r.to(device=bias.device, dtype=bias.dtype)
