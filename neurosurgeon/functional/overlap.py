"""Chance overlap of two subnetworks: the hypergeometric distribution.

Two independent, uniformly random subnetworks of sizes ``k_a`` and ``k_b`` among ``n`` units
share X units, X ~ Hypergeometric(n, k_a, k_b) (Fisher 1935, the null of the exact test), with

    P(X = x) = C(k_a, x) C(n - k_a, k_b - x) / C(n, k_b),    E[X] = k_a k_b / n.

The tail is summed term by term from log-probabilities (``lgamma`` in float64), so small
counts are exact to rounding. For millions of units only the terms that matter are summed:
beyond the mode the terms fall off at least geometrically, with ratio
``r(x) = (k_a - x)(k_b - x) / ((x + 1)(n - k_a - k_b + x + 1))``, so summing stops once the
remainder, bounded by ``term * r / (1 - r)``, is below ``2**-60`` of the sum. A tail that
starts below the mean is computed as one minus the other tail.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hypergeometric_log_pmf", "hypergeometric_sf", "expected_overlap"]

_CHUNK = 1 << 16
_TOL = 60 * math.log(2.0)


def _check(n: int, k_a: int, k_b: int) -> tuple[int, int, int]:
    for name, v in (("n", n), ("k_a", k_a), ("k_b", k_b)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if k_a > n or k_b > n:
        raise ValueError(f"k_a and k_b must be at most n={n}, got k_a={k_a}, k_b={k_b}")
    return n, k_a, k_b


def _log_comb(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def hypergeometric_log_pmf(x: torch.Tensor, n: int, k_a: int, k_b: int) -> torch.Tensor:
    """log P(X = x) for X ~ Hypergeometric(n, k_a, k_b), float64; ``-inf`` outside the support.

    Args:
        x: overlaps, any shape (integer or float tensor of whole numbers).
        n: units in all; k_a, k_b: the two subnetworks' sizes.

    Example:
        >>> hypergeometric_log_pmf(torch.tensor([0, 1, 2]), 4, 2, 2).exp()
        tensor([0.1667, 0.6667, 0.1667], dtype=torch.float64)
    """
    n, k_a, k_b = _check(n, k_a, k_b)
    x = x.to(torch.float64)
    lo, hi = max(0, k_b - (n - k_a)), min(k_a, k_b)
    f = lambda v: torch.tensor(float(v), dtype=torch.float64, device=x.device)  # noqa: E731
    inside = (x >= lo) & (x <= hi)
    xs = x.clamp(lo, hi)
    logp = _log_comb(f(k_a), xs) + _log_comb(f(n - k_a), f(k_b) - xs) - _log_comb(f(n), f(k_b))
    return torch.where(inside, logp, torch.full_like(logp, -math.inf))


def _tail_log_sum(start: int, stop: int, step: int, n: int, k_a: int, k_b: int) -> float:
    """log of sum of P(X = x) for x = start, start + step, ... up to ``stop`` (inclusive), truncated
    once the terms left are provably below ``2**-60`` of the sum."""
    mode = (k_a + 1) * (k_b + 1) // (n + 2)
    total = -math.inf
    x = start
    while (x <= stop) if step > 0 else (x >= stop):
        end = min(x + _CHUNK * step, stop + step) if step > 0 else max(x + _CHUNK * step, stop + step)
        xs = torch.arange(x, end, step, dtype=torch.float64)
        logp = hypergeometric_log_pmf(xs, n, k_a, k_b)
        total = float(torch.logaddexp(torch.tensor(total, dtype=torch.float64), torch.logsumexp(logp, 0)))
        last = int(xs[-1])
        x = end
        past_mode = last >= mode if step > 0 else last <= mode
        if not past_mode:
            continue
        # Ratio of the next term to the last one: shrinking away from the mode in both directions.
        if step > 0:
            r = (k_a - last) * (k_b - last) / ((last + 1) * (n - k_a - k_b + last + 1))
        else:
            r = last * (n - k_a - k_b + last) / ((k_a - last + 1) * (k_b - last + 1)) if last > 0 else 0.0
        if r < 1 and float(logp[-1]) + math.log(r / (1 - r) + 1e-300) < total - _TOL:
            break
    return total


def hypergeometric_sf(x: int, n: int, k_a: int, k_b: int) -> float:
    """P(X >= x), X ~ Hypergeometric(n, k_a, k_b): the p-value of an overlap of ``x`` units.

    Args:
        x: the observed overlap.
        n: units in all; k_a, k_b: the two subnetworks' sizes.

    Returns:
        the upper-tail probability, in [0, 1].

    Example:
        >>> round(hypergeometric_sf(2, 4, 2, 2), 4)  # both of B's 2 units among A's 2 of 4: 1 / C(4, 2)
        0.1667
    """
    n, k_a, k_b = _check(n, k_a, k_b)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"x must be an int, got {x!r}")
    lo, hi = max(0, k_b - (n - k_a)), min(k_a, k_b)
    if x <= lo:
        return 1.0
    if x > hi:
        return 0.0
    if x > expected_overlap(n, k_a, k_b):
        return min(1.0, math.exp(_tail_log_sum(x, hi, 1, n, k_a, k_b)))
    return min(1.0, max(0.0, -math.expm1(_tail_log_sum(x - 1, lo, -1, n, k_a, k_b))))


def expected_overlap(n: int, k_a: int, k_b: int) -> float:
    """E[X] = k_a k_b / n, the overlap of two independent uniformly random subnetworks (0 when n = 0).

    Example:
        >>> expected_overlap(100, 10, 20)
        2.0
    """
    n, k_a, k_b = _check(n, k_a, k_b)
    return k_a * k_b / n if n else 0.0
