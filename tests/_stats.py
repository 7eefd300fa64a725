"""Chi-square uniformity p-value for the statistical tests (scipy when installed; not a test file)."""

import math

import torch

try:
    from scipy import stats
except ImportError:  # pragma: no cover - scipy is optional
    stats = None


def chi2_uniform_pvalue(counts: torch.Tensor) -> float:
    """p-value of Pearson's chi-square test that ``counts`` come from equal-probability bins."""
    counts = counts.to(torch.float64)
    expected = counts.sum() / counts.numel()
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = counts.numel() - 1
    if stats is not None:
        return float(stats.chi2.sf(stat, dof))
    # Wilson-Hilferty normal approximation of the chi-square tail (good to ~1e-3 for dof >= 10).
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))
