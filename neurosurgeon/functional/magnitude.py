"""Magnitude pruning (Han et al. 2015; Frankle & Carbin 2019, arXiv 1803.03635).

Two rules, chosen by ``rule``:

- ``"abs"`` (default): zeroes exactly round(p * n) entries of smallest |w|; ties at the
  threshold are broken by flat index (lower index pruned first), so the count is exact for any
  input.
- ``"v0"``: NeuroSurgeon 0.1.0's rule, kept to reproduce its masks. It ranks *signed* values:
  with q the linearly interpolated p-quantile of w (``torch.quantile``'s default), it keeps
  w >= q (for p = 1, w > q: nothing). So it prunes the most negative weights, ceil(p (n - 1))
  of them when the values are distinct, and keeps every entry tied with q.

A mask is cheap to *verify* but costly to *find*: given any tau, if exactly n - k entries have
|w| > tau, then {|w| > tau} is the kept set (every kept entry exceeds every pruned one, so no tie
straddles the split and the tie rule has nothing to decide). ``magnitude_mask_and_threshold``
returns such a tau with the mask, and takes one back as ``threshold_hint``: an unchanged (or
barely changed) weight is then re-masked in a few streaming passes instead of a selection, and a
hint that no longer certifies is simply ignored, so a stale mask cannot come out of it.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_choice, check_fraction, transformed

__all__ = ["magnitude_mask"]

#: The fraction pruned by default.
PRUNE_PERCENTAGE = 0.2
#: The rule by default: the round(p * n) smallest |w|.
RULE = "abs"
RULES = ("abs", "v0")


def num_pruned(numel: int, prune_percentage: float) -> int:
    """How many of ``numel`` entries a prune fraction removes: Python ``round(p * n)``."""
    return int(round(check_fraction("prune_percentage", prune_percentage) * numel))


_SAMPLE = 65536


def _kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry of 1-d ``x`` (exactly ``torch.kthvalue(x, k).values``), faster for large x.

    Floyd & Rivest (1975): a strided sample brackets the k-th value between two sample order
    statistics; one pass counts the entries below the bracket and gathers those inside it, and
    ``kthvalue`` runs on that small band only. If the bracket misses (adversarially ordered
    data), it falls back to one full ``kthvalue``.
    """
    n = x.numel()
    if n <= 8 * _SAMPLE:
        return torch.kthvalue(x, k).values
    sample = x[:: n // _SAMPLE]
    s = sample.numel()
    q = k / n
    margin = 5.0 * math.sqrt(s * q * (1.0 - q)) + 32
    lo_rank, hi_rank = int(q * s - margin), int(math.ceil(q * s + margin))
    lo = torch.kthvalue(sample, lo_rank).values if lo_rank >= 1 else None
    hi = torch.kthvalue(sample, hi_rank).values if hi_rank <= s else None
    if lo is None:
        below, in_band = 0, x <= hi
    else:
        in_band = x >= lo
        below = n - int(torch.count_nonzero(in_band))
        if hi is not None:
            in_band &= x <= hi
    # Boolean indexing (nonzero + gather) rather than masked_select: on CPU masked_select builds
    # int64 prefix sums over all n entries (~25 bytes an entry of fresh pages), most of the call.
    band = x[in_band]
    if not 1 <= k - below <= band.numel():
        return torch.kthvalue(x, k).values
    return torch.kthvalue(band, k - below).values


def magnitude_mask(weight: torch.Tensor, *, prune_percentage: float = PRUNE_PERCENTAGE, rule: str = RULE) -> torch.Tensor:
    """Binary mask (weight's shape and dtype) keeping all but the round(p * n) smallest |w|.

    Finds the k-th |w| by selection (:func:`_kth_smallest`: a sampled bracket, then ``torch.kthvalue``
    on the band inside it; O(n), any size, where ``torch.quantile`` refuses > 16M entries) and
    splits ties at it by flat index, so exactly round(p * n) entries are pruned. With
    ``rule="v0"``, NeuroSurgeon 0.1.0's mask instead: keep w >= the p-quantile of the signed
    values (:func:`v0_magnitude_mask`).

    Args:
        weight: any shape, floating.
        prune_percentage: p in [0, 1].
        rule: ``"abs"`` (the smallest |w|, exactly round(p * n)) or ``"v0"`` (0.1.0's rule).

    Returns:
        the mask, 1 for kept entries and 0 for pruned ones.

    Example:
        >>> magnitude_mask(torch.tensor([0.3, -0.4, 0.2, 0.1]), prune_percentage=0.5)
        tensor([1., 1., 0., 0.])
        >>> magnitude_mask(torch.tensor([0.3, -0.4, 0.2, 0.1]), prune_percentage=0.5, rule="v0")
        tensor([1., 0., 1., 0.])
    """
    return magnitude_mask_and_threshold(weight, prune_percentage=prune_percentage, rule=rule)[0]


def v0_magnitude_mask(weight: torch.Tensor, *, prune_percentage: float = PRUNE_PERCENTAGE) -> torch.Tensor:
    """NeuroSurgeon 0.1.0's magnitude-pruning mask: keep w >= q, q the p-quantile of the signed values.

    q is ``torch.quantile(w.flatten(), p)`` (linear interpolation between the order statistics
    at ranks floor(p (n - 1)) and ceil(p (n - 1)), the rank computed in w's dtype), found here by
    selection so any size works; at p = 1 the mask keeps w > q, i.e. nothing. Every entry equal
    to q is kept, so with distinct values ceil(p (n - 1)) entries are pruned: the most negative
    ones, not the smallest |w|. Half-precision weights are ranked in float32 (exact), where 0.1.0
    raises.

    Args:
        weight: any shape, floating.
        prune_percentage: p in [0, 1].

    Returns:
        the mask, weight's shape and dtype.

    Example:
        >>> v0_magnitude_mask(torch.tensor([-0.3, 0.1, 0.2, -0.1]), prune_percentage=0.5)
        tensor([0., 1., 1., 0.])
    """
    p = check_fraction("prune_percentage", prune_percentage)
    flat = weight.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    n = flat.numel()
    # torch.quantile forms the rank as a tensor of the input's dtype: p * (n - 1), rounded there.
    rank = torch.tensor(p, dtype=flat.dtype) * (n - 1)
    below, above = int(rank), int(torch.ceil(rank))
    kth = (lambda x, k: torch.kthvalue(x, k).values) if transformed(flat) else _kth_smallest
    low = kth(flat, below + 1)
    high = low if above == below else kth(flat, above + 1)
    q = torch.lerp(low, high, (rank - below).to(flat.device))
    kept = flat > q if p == 1.0 else flat >= q
    return kept.to(weight.dtype).reshape(weight.shape)


def magnitude_mask_and_threshold(
    weight: torch.Tensor, *, prune_percentage: float = PRUNE_PERCENTAGE, threshold_hint: torch.Tensor | None = None,
    rule: str = RULE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(:func:`magnitude_mask`, a threshold tau certifying it), reusing ``threshold_hint`` when it still certifies.

    tau is a 0-d tensor with ``mask == (|w| > tau)`` and exactly n - round(p * n) entries above
    it; it is None when no such tau exists (a tie straddles the split), for p in {0, 1}, and
    under ``torch.compile``/functorch transforms (which never read values to choose a path).
    Passing the previous call's tau as ``threshold_hint`` costs ~4 streaming passes when it
    certifies the current weight and one wasted pass when it does not; the mask is the same
    either way (see the module docstring for why). With ``rule="v0"`` there is no certificate:
    the mask is :func:`v0_magnitude_mask` and tau is None.

    Example:
        >>> w = torch.tensor([0.3, -0.1, 0.2, 0.1])
        >>> m, tau = magnitude_mask_and_threshold(w, prune_percentage=0.5)
        >>> magnitude_mask_and_threshold(w * 2, prune_percentage=0.5, threshold_hint=tau)[0]
        tensor([1., 0., 1., 0.])
    """
    if check_choice("rule", rule, RULES) == "v0":
        return v0_magnitude_mask(weight, prune_percentage=prune_percentage), None
    n = weight.numel()
    k = num_pruned(n, prune_percentage)
    if k == 0:
        return torch.ones_like(weight), None
    if k == n:
        return torch.zeros_like(weight), None
    mag = weight.detach().abs().reshape(-1)
    if transformed(mag):
        return _tie_split_mask(weight, mag, torch.kthvalue(mag, k).values, k), None
    if threshold_hint is not None and threshold_hint.device == mag.device and threshold_hint.dtype == mag.dtype:
        kept = mag > threshold_hint
        if int(torch.count_nonzero(kept)) == n - k:
            return kept.to(weight.dtype).reshape(weight.shape), threshold_hint
    threshold = _kth_smallest(mag, k)
    kept = mag > threshold
    # Ties at the threshold are rare, so look for them only when some must be kept: the last
    # (by index) `surplus` of them, the same rule as the value-independent path.
    surplus = (n - k) - int(torch.count_nonzero(kept))
    if surplus == 0:
        return kept.to(weight.dtype).reshape(weight.shape), threshold
    ties = (mag == threshold).nonzero().squeeze(1)
    kept[ties[ties.numel() - surplus:]] = True
    return kept.to(weight.dtype).reshape(weight.shape), None


def _tie_split_mask(weight: torch.Tensor, mag: torch.Tensor, threshold: torch.Tensor, k: int) -> torch.Tensor:
    """Value-independent path (torch.compile graphs, functorch transforms): entries equal to the
    threshold are pruned in index order until exactly k are pruned."""
    below = mag < threshold
    at = mag == threshold
    quota = k - below.sum()
    tie_rank = torch.cumsum(at.to(torch.int64), dim=0)
    pruned = below | (at & (tie_rank <= quota))
    return (~pruned).to(weight.dtype).reshape(weight.shape)
