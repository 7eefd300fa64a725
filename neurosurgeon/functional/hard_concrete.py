"""Hard concrete masks (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through
L0 Regularization", arXiv 1712.01312).

With u ~ U(0, 1), log alpha = theta, temperature beta and stretch (l, r) (section 4, eq. 9-10):
    s = sigma((log u - log(1 - u) + theta) / beta),  s_bar = s (r - l) + l,  z = min(1, max(0, s_bar)).
The expected L0 norm is sum sigma(theta - beta log(-l / r)) (eq. 12); the deterministic
test-time gate is z_hat = min(1, max(0, sigma(theta)(r - l) + l)) (eq. 13), which we binarise
at 0.5, i.e. z = 1[theta > 0] for l + r = 1.
"""

from __future__ import annotations

import math

import torch

from . import random as nr
from ._checks import check_broadcasts_to, check_fraction, check_stretch, check_temperature

__all__ = [
    "hard_concrete_init",
    "hard_concrete_mask",
    "hard_concrete_mask_from_noise",
    "hard_concrete_hard_mask",
    "hard_concrete_l0",
    "NOISE_EPS",
]

#: u is drawn from U(eps, 1 - eps) so log u and log(1 - u) stay finite.
NOISE_EPS = 1e-6
_INIT_CLIP = 1e-4


def hard_concrete_init(mask_init_percentage: float) -> float:
    """log alpha = log(p / (1 - p)) with p, the expected kept fraction, clipped to [1e-4, 1 - 1e-4]."""
    p = check_fraction("mask_init_percentage", mask_init_percentage)
    p = min(max(p, _INIT_CLIP), 1.0 - _INIT_CLIP)
    return math.log(p / (1.0 - p))


def hard_concrete_mask_from_noise(
    log_alpha: torch.Tensor,
    noise: torch.Tensor,
    *,
    temperature: float = 2.0 / 3.0,
    left: float = -0.1,
    right: float = 1.1,
) -> torch.Tensor:
    """Sampled soft gate z (eq. 9-10) from explicit uniform noise ``u`` in (0, 1), broadcastable to theta."""
    beta = check_temperature(temperature)
    lo, hi = check_stretch(left, right)
    check_broadcasts_to("noise", noise, "log_alpha", tuple(log_alpha.shape))
    # The logistic noise log u - log(1 - u) is formed at the noise's precision (at least theta's):
    # rounding u to a half-precision theta first would send u = 1 - eps to 1 and the noise to inf.
    u = noise.to(torch.promote_types(noise.dtype, log_alpha.dtype))
    logistic = (torch.log(u) - torch.log1p(-u)).to(log_alpha.dtype)
    return stretched_gate(logistic, log_alpha, beta, hi - lo, lo)


def stretched_gate(logistic, log_alpha, beta, scale, left):
    """Eq. 9-10 from logistic noise log(u / (1 - u)): clamp(sigma((noise + theta) / beta) * scale + l, 0, 1),
    scale = r - l. ``beta``, ``scale`` and ``left`` may be floats or 0-d tensors (the fused kernel
    passes tensors, so a temperature schedule does not recompile it)."""
    return stretch_and_clamp(torch.sigmoid((logistic + log_alpha) / beta), scale, left)


def stretch_and_clamp(s, scale, left):
    """Eq. 10: the concrete sample s stretched to (l, r) and clamped, min(1, max(0, s * scale + l)), scale = r - l."""
    return torch.clamp(s * scale + left, 0.0, 1.0)


def hard_concrete_mask(
    log_alpha: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float = 2.0 / 3.0,
    left: float = -0.1,
    right: float = 1.1,
) -> torch.Tensor:
    """Sampled soft gate z in [0, 1] with u ~ U(eps, 1 - eps) drawn from ``key``.

    Args:
        log_alpha: theta, any shape.
        key: PRNG key ``(2,)``; vmap over a ``(K, 2)`` batch for K samples.

    Example:
        >>> from neurosurgeon.functional import random as nr
        >>> z = hard_concrete_mask(torch.zeros(3), nr.key(0))
        >>> bool(((0 <= z) & (z <= 1)).all())
        True
    """
    u = noise_uniform(key, tuple(log_alpha.shape))
    return hard_concrete_mask_from_noise(log_alpha, u, temperature=temperature, left=left, right=right)


def noise_uniform(key: torch.Tensor, shape) -> torch.Tensor:
    """The gate noise u ~ U(eps, 1 - eps) (float32) that :func:`hard_concrete_mask` draws from ``key``."""
    return nr.uniform(key, shape, dtype=torch.float32, minval=NOISE_EPS, maxval=1.0 - NOISE_EPS)


def hard_concrete_hard_mask(log_alpha: torch.Tensor, *, left: float = -0.1, right: float = 1.1) -> torch.Tensor:
    """Deterministic gate (eq. 13) binarised: 1 where clamp(sigma(theta)(r - l) + l, 0, 1) > 0.5."""
    lo, hi = check_stretch(left, right)
    gate = torch.clamp(torch.sigmoid(log_alpha) * (hi - lo) + lo, 0.0, 1.0)
    return (gate > 0.5).to(log_alpha.dtype)


def hard_concrete_l0(
    log_alpha: torch.Tensor, *, temperature: float = 2.0 / 3.0, left: float = -0.1, right: float = 1.1
) -> torch.Tensor:
    """Expected number of non-zero gates, sum sigma(theta - beta log(-l / r)) (eq. 12); 0-d tensor."""
    beta = check_temperature(temperature)
    lo, hi = check_stretch(left, right)
    return nonzero_probability(log_alpha, l0_shift(beta, lo, hi)).sum()


def l0_shift(beta: float, left: float, right: float) -> float:
    """beta log(-l / r): theta minus this is the logit of P(z != 0) (eq. 12)."""
    return beta * math.log(-left / right)


def nonzero_probability(log_alpha: torch.Tensor, shift) -> torch.Tensor:
    """P(z != 0) = sigma(theta - beta log(-l / r)) per gate (eq. 12), with ``shift`` from
    :func:`l0_shift` (a float, or a 0-d tensor in the fused kernel): its sum is the expected L0."""
    return torch.sigmoid(log_alpha - shift)
