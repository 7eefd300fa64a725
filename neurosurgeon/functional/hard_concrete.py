"""Hard concrete masks (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through
L0 Regularization", arXiv 1712.01312).

With u ~ U(0, 1), log alpha = theta, temperature beta and stretch (l, r) (section 4, eq. 9-10):
    s = sigma((log u - log(1 - u) + theta) / beta),  s_bar = s (r - l) + l,  z = min(1, max(0, s_bar)).
The expected L0 norm is sum sigma(theta - beta log(-l / r)) (eq. 12). The test-time gate
z_hat = min(1, max(0, sigma(theta)(r - l) + l)) (eq. 13) is binarised at 0.5, which is exactly
theta > tau with tau = logit((0.5 - l) / (r - l)) (tau = 0 at the defaults).
"""

from __future__ import annotations

import math

import torch

from . import random as nr
from ._checks import check_fraction, check_stretch, check_temperature, renamed_keywords

__all__ = ["hard_concrete_init", "hard_concrete_mask", "hard_concrete_hard_mask", "hard_concrete_l0", "hard_concrete_noise"]

#: The paper's defaults (section 4): temperature 2/3, stretch (-0.1, 1.1), half the gates open.
TEMPERATURE = 2.0 / 3.0
LEFT = -0.1
RIGHT = 1.1
MASK_INIT_PERCENTAGE = 0.5

#: u is drawn from U(eps, 1 - eps) so log u and log(1 - u) stay finite.
NOISE_EPS = 1e-6
_INIT_CLIP = 1e-4


def hard_concrete_init(mask_init_percentage: float = MASK_INIT_PERCENTAGE) -> float:
    """log alpha = log(p / (1 - p)), p the expected kept fraction, clipped to [1e-4, 1 - 1e-4].

    Example:
        >>> hard_concrete_init(0.5)
        0.0
    """
    p = check_fraction("mask_init_percentage", mask_init_percentage)
    p = min(max(p, _INIT_CLIP), 1.0 - _INIT_CLIP)
    return math.log(p / (1.0 - p))


@renamed_keywords(left="left_stretch", right="right_stretch")
def hard_concrete_mask(
    log_alpha: torch.Tensor,
    key: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    left_stretch: float = LEFT,
    right_stretch: float = RIGHT,
) -> torch.Tensor:
    """Sampled gate z in [0, 1] (eq. 9-10), with u ~ U(eps, 1 - eps) drawn from ``key``.

    Args:
        log_alpha: theta, any shape.
        key: PRNG key ``(2,)``; vmap over a ``(K, 2)`` batch for K samples.
        temperature, left_stretch, right_stretch: beta > 0, l < 0, r > 1.

    Returns:
        z, theta's shape and dtype, differentiable in theta.

    Example:
        >>> from neurosurgeon.functional import random as nr
        >>> z = hard_concrete_mask(torch.zeros(3), nr.key(0))
        >>> bool(((0 <= z) & (z <= 1)).all())
        True
    """
    beta = check_temperature(temperature)
    lo, hi = check_stretch(left_stretch, right_stretch)
    u = _gate_noise(key, log_alpha)
    # log u - log(1 - u) as one logarithm, at float32 at least: rounding u to a half-precision
    # theta first would send u = 1 - eps to 1 and the noise to inf.
    u = u.to(torch.promote_types(u.dtype, log_alpha.dtype))
    logistic = torch.log(u / (1.0 - u)).to(log_alpha.dtype)
    s = torch.sigmoid((logistic + log_alpha) / beta)
    return torch.clamp(s * (hi - lo) + lo, 0.0, 1.0)


def _gate_noise(key: torch.Tensor, log_alpha: torch.Tensor) -> torch.Tensor:
    """u ~ U(eps, 1 - eps), theta's shape (:func:`hard_concrete_noise`). A sharded theta (a
    ``DTensor``) draws only the gates of its local shard, so the noise does not depend on the
    sharding."""
    shard = nr.local_entries(log_alpha)
    if shard is None:
        return hard_concrete_noise(key, log_alpha.numel(), device=log_alpha.device).reshape(log_alpha.shape)
    from torch.distributed.tensor import DTensor

    index, start, stop = shard
    local = log_alpha.to_local()
    u = hard_concrete_noise(key, log_alpha.numel(), entries=(start, stop), device=local.device)
    return DTensor.from_local(u[(index - start).to(local.device)], log_alpha.device_mesh, log_alpha.placements,
                              shape=log_alpha.shape, stride=log_alpha.stride())


def hard_concrete_noise(key: torch.Tensor, n: int, *, entries: tuple[int, int] | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """The uniform noise u ~ U(eps, 1 - eps) of ``n`` gates (flat), or of gates ``start .. stop - 1``.

    Gate j reads word 2j of the key's stream for j < h = ceil(n / 2) and word 2(j - h) + 1
    after, so gates j and j + h share one Threefry block (a compiled caller computes each block
    once instead of once per word). A range draws only the blocks its gates read, and equals
    the same slice of the full draw bit for bit: shards of any size draw their own gates.

    Args:
        key: PRNG key ``(2,)``.
        n: number of gates of the whole tensor.
        entries: ``(start, stop)``, a flat range of gates; default all ``n``.
        device: output device (default: the key's).

    Returns:
        float32 tensor of ``stop - start`` entries.

    Example:
        >>> from neurosurgeon.functional import random as nr
        >>> full = hard_concrete_noise(nr.key(0), 7)
        >>> torch.equal(torch.cat([hard_concrete_noise(nr.key(0), 7, entries=r) for r in ((0, 3), (3, 7))]), full)
        True
    """
    h = (n + 1) // 2
    draw = dict(dtype=torch.float32, device=device, minval=NOISE_EPS, maxval=1.0 - NOISE_EPS)
    start, stop = nr._check_entries(entries, n)
    if (start, stop) == (0, n):
        words = nr.uniform(key, (2 * h,), **draw)
        return torch.cat((words[0::2], words[1::2]))[:n]
    first = (start, min(stop, h))  # gates reading even words 2j
    second = (max(start, h), stop)  # gates reading odd words 2(j - h) + 1
    parts = []
    if first[1] > first[0]:
        parts.append(nr.uniform(key, (2 * h,), entries=(2 * first[0], 2 * first[1] - 1), **draw)[0::2])
    if second[1] > second[0]:
        parts.append(nr.uniform(key, (2 * h,), entries=(2 * (second[0] - h) + 1, 2 * (second[1] - h)), **draw)[0::2])
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float32, device=device or key.device)


@renamed_keywords(left="left_stretch", right="right_stretch")
def hard_concrete_threshold(left_stretch: float = LEFT, right_stretch: float = RIGHT) -> float:
    """tau = logit((0.5 - l) / (r - l)), in float64: the gate of eq. 13 exceeds 0.5 iff theta > tau."""
    lo, hi = check_stretch(left_stretch, right_stretch)
    if abs(lo + hi - 1.0) < 1e-12:
        # A symmetric stretch (l + r = 1, as the defaults) has tau = 0 exactly; decimal stretches
        # such as -0.1 and 1.1 are not exact floats, and would leave tau a rounding error off 0.
        return 0.0
    return math.log((0.5 - lo) / (hi - 0.5))


def _threshold_in(dtype: torch.dtype, tau: float, device) -> torch.Tensor:
    """The largest value of ``dtype`` not above tau: for any theta of that dtype, theta > tau
    exactly when theta > this value, so the comparison never rounds tau the wrong way."""
    t = torch.tensor(tau, dtype=torch.float64).to(dtype)
    if float(t) > tau:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return t.to(device)


@renamed_keywords(left="left_stretch", right="right_stretch")
def hard_concrete_hard_mask(log_alpha: torch.Tensor, *, left_stretch: float = LEFT, right_stretch: float = RIGHT) -> torch.Tensor:
    """Deterministic gate (eq. 13) binarised at 0.5: 1[theta > tau], in theta's dtype.

    tau is computed once in float64, so the mask is the same in every dtype (theta = tau is
    pruned); going through sigma and the clamp in theta's own dtype would move the boundary
    with rounding.

    Example:
        >>> hard_concrete_hard_mask(torch.tensor([-1e-17, 0.0, 1e-9], dtype=torch.bfloat16))
        tensor([0., 0., 1.], dtype=torch.bfloat16)
    """
    tau = hard_concrete_threshold(left_stretch, right_stretch)
    if log_alpha.dtype.is_floating_point and tau != 0.0:
        tau = _threshold_in(log_alpha.dtype, tau, log_alpha.device)
    return (log_alpha > tau).to(log_alpha.dtype)


@renamed_keywords(left="left_stretch", right="right_stretch")
def hard_concrete_l0(
    log_alpha: torch.Tensor, *, temperature: float = TEMPERATURE, left_stretch: float = LEFT,
    right_stretch: float = RIGHT,
) -> torch.Tensor:
    """Expected number of non-zero gates, sum sigma(theta - beta log(-l / r)) (eq. 12); 0-d tensor.

    Example:
        >>> round(float(hard_concrete_l0(torch.zeros(4))), 4)
        3.3273
    """
    beta = check_temperature(temperature)
    lo, hi = check_stretch(left_stretch, right_stretch)
    return torch.sigmoid(log_alpha - beta * math.log(-lo / hi)).sum()
