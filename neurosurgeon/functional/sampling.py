"""Random subnetworks of a given size: the baselines an ablation is compared against.

Both samplers zero exactly k = sum(h) mask units, chosen uniformly without replacement:
``randomly_sampled`` from all units, ``complement_sampled`` from the units outside the
subnetwork (h = 0). Each unit gets a unique 63-bit score (32 random bits above its 31-bit
index) and the k smallest eligible scores are zeroed: a uniformly random k-subset, exact even
with repeated random words.
"""

from __future__ import annotations

import torch

from . import random as nr
from ._checks import check_key, concrete_int

__all__ = ["sample_zeros", "randomly_sampled_mask", "complement_sampled_mask"]

_INDEX_BITS = 31
_NEVER = torch.iinfo(torch.int64).max


def sample_zeros(key: torch.Tensor, eligible: torch.Tensor, num_zeros: int | torch.Tensor) -> torch.Tensor:
    """Boolean tensor (eligible's shape) with ``num_zeros`` True entries drawn uniformly from ``eligible``.

    Args:
        key: PRNG key ``(2,)``.
        eligible: bool tensor; only its True entries can be chosen.
        num_zeros: k, a Python int (uses one O(n) ``kthvalue``) or a 0-d integer tensor
            (value-independent ``sort``, for ``torch.compile`` graphs and batched counts).
            k must not exceed the number of eligible entries.
    """
    check_key(key)
    n = eligible.numel()
    if n >= 2**_INDEX_BITS:
        raise ValueError(f"cannot sample over {n} mask units (at most {2**_INDEX_BITS - 1})")
    words = nr.bits(key, (n,))
    index = torch.arange(n, dtype=torch.int64, device=eligible.device)
    score = torch.where(eligible.flatten(), (words << _INDEX_BITS) | index, _NEVER)
    if isinstance(num_zeros, int):
        if num_zeros == 0:
            return torch.zeros_like(eligible, dtype=torch.bool)
        threshold = torch.kthvalue(score, num_zeros).values
        return (score <= threshold).reshape(eligible.shape)
    k = num_zeros.to(torch.int64)
    threshold = torch.sort(score).values.gather(0, (k - 1).clamp(min=0).reshape(1)).squeeze(0)
    return ((score <= threshold) & (k > 0)).reshape(eligible.shape)


def _checked_count(hard_mask: torch.Tensor, num_zeros: int | None, available: torch.Tensor, what: str):
    """k = sum(h) as an int when it can be read without breaking a transform, else as a tensor."""
    if num_zeros is None:
        k_t = (hard_mask != 0).sum()  # counted in int64: a bf16 sum is inexact above 256
        k = concrete_int(k_t)
        num_zeros = k if k is not None else k_t
    elif isinstance(num_zeros, bool) or not isinstance(num_zeros, int) or num_zeros < 0:
        raise ValueError(f"num_zeros must be a non-negative int or None, got {num_zeros!r}")
    avail = concrete_int(available)
    k = num_zeros if isinstance(num_zeros, int) else None
    if k is not None and avail is not None and k > avail:
        raise ValueError(
            f"{what}: the subnetwork has {k} mask units but only {avail} lie outside it; "
            f"cannot sample {k} units from the complement (the subnetwork must be at most half the layer)"
        )
    return num_zeros


def randomly_sampled_mask(key: torch.Tensor, hard_mask: torch.Tensor, *, num_zeros: int | None = None) -> torch.Tensor:
    """``randomly_sampled`` ablation: ones except k = sum(h) units drawn uniformly from all units.

    Args:
        key: PRNG key ``(2,)``; vmap over ``(K, 2)`` keys for K baselines.
        hard_mask: h, binary, the subnetwork at mask-unit shape.
        num_zeros: k if already known (skips a host read); default sum(h).

    Returns:
        binary mask of h's shape and dtype.
    """
    eligible = torch.ones_like(hard_mask, dtype=torch.bool)
    k = _checked_count(hard_mask, num_zeros, torch.tensor(hard_mask.numel()), "randomly_sampled")
    return (~sample_zeros(key, eligible, k)).to(hard_mask.dtype)


def complement_sampled_mask(key: torch.Tensor, hard_mask: torch.Tensor, *, num_zeros: int | None = None) -> torch.Tensor:
    """``complement_sampled`` ablation: ones except k = sum(h) units drawn from where h = 0.

    Raises:
        ValueError: if k exceeds the number of units outside the subnetwork (both counts named).
    """
    outside = hard_mask == 0
    k = _checked_count(hard_mask, num_zeros, outside.sum(), "complement_sampled")
    return (~sample_zeros(key, outside, k)).to(hard_mask.dtype)
