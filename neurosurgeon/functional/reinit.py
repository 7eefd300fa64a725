"""Fresh values for ``random_ablate``: drawn like the layer's own initialisation, from a key.

- Linear / Conv weights: kaiming-uniform with a = sqrt(5) (He et al. 2015), i.e.
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases U(+-1/sqrt(fan_in)) (``nn.Linear.reset_parameters``).
- GPT-2 Conv1D weights: N(0, 0.02); bias 0 (``transformers.pytorch_utils.Conv1D``).
"""

from __future__ import annotations

import math

import torch

from . import random as nr
from .units import fan_in

__all__ = ["reinit_weight", "reinit_bias"]


def _bound(kind: str, weight_shape) -> float:
    fi = fan_in(kind, tuple(weight_shape))
    return 1.0 / math.sqrt(fi) if fi > 0 else 0.0


def reinit_weight(key: torch.Tensor, kind: str, weight: torch.Tensor) -> torch.Tensor:
    """A freshly initialised weight like ``weight`` (shape, dtype, device), drawn from ``key``."""
    shape = tuple(weight.shape)
    if kind == "gpt_conv1d":
        r = nr.normal(key, shape, dtype=torch.float32, std=0.02)
    else:
        b = _bound(kind, shape)
        r = nr.uniform(key, shape, dtype=torch.float32, minval=-b, maxval=b)
    return r.to(device=weight.device, dtype=weight.dtype)


def reinit_bias(key: torch.Tensor, kind: str, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A freshly initialised bias like ``bias``; its bound depends on the weight's fan-in."""
    if kind == "gpt_conv1d":
        return torch.zeros_like(bias)
    b = _bound(kind, tuple(weight.shape))
    r = nr.uniform(key, tuple(bias.shape), dtype=torch.float32, minval=-b, maxval=b)
    return r.to(device=bias.device, dtype=bias.dtype)
