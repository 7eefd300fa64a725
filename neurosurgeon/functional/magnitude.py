"""Magnitude pruning (Han et al. 2015; Frankle & Carbin 2019, arXiv 1803.03635).

Zeroes exactly round(p * n) entries of smallest |w|; ties at the threshold are broken by flat
index (lower index pruned first), so the count is exact for any input.
"""

from __future__ import annotations

import torch

from ._checks import check_fraction

__all__ = ["magnitude_mask", "num_pruned"]


def num_pruned(numel: int, prune_percentage: float) -> int:
    """How many of ``numel`` entries a prune fraction removes: Python ``round(p * n)``."""
    return int(round(check_fraction("prune_percentage", prune_percentage) * numel))


def magnitude_mask(weight: torch.Tensor, *, prune_percentage: float = 0.2) -> torch.Tensor:
    """Binary mask (weight's shape and dtype) keeping all but the round(p * n) smallest |w|.

    Uses one ``torch.kthvalue`` (O(n), any size; ``torch.quantile`` refuses > 16M entries) and
    a cumulative count to split ties deterministically.

    Args:
        weight: any shape, floating.
        prune_percentage: p in [0, 1].

    Example:
        >>> magnitude_mask(torch.tensor([0.3, -0.1, 0.2, 0.1]), prune_percentage=0.5)
        tensor([1., 0., 1., 0.])
    """
    n = weight.numel()
    k = num_pruned(n, prune_percentage)
    if k == 0:
        return torch.ones_like(weight)
    if k == n:
        return torch.zeros_like(weight)
    mag = weight.detach().abs().flatten()
    threshold = torch.kthvalue(mag, k).values
    below = mag < threshold
    at = mag == threshold
    # Entries equal to the threshold are pruned in index order until exactly k are pruned.
    quota = k - below.sum()
    tie_rank = torch.cumsum(at.to(torch.int64), dim=0)
    pruned = below | (at & (tie_rank <= quota))
    return (~pruned).to(weight.dtype).reshape(weight.shape)
