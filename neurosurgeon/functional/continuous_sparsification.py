"""Continuous sparsification masks (Savarese, Silva & Maire 2020, arXiv 1912.04427).

The soft mask is m = sigma(beta * s) (eq. 5 of the paper, with s the mask parameters and beta
the temperature annealed upward during training); the hard mask it converges to is
m = 1[s > 0] (eq. 6).
"""

from __future__ import annotations

import torch

from ._checks import check_temperature, transformed

__all__ = ["continuous_sparsification_mask", "continuous_sparsification_hard_mask", "continuous_sparsification_l0"]


def continuous_sparsification_mask(mask_params: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Soft mask sigma(beta * theta), in [0, 1], same shape and dtype as ``mask_params``.

    Args:
        mask_params: theta, any shape (the mask-unit shape).
        temperature: beta, finite and > 0.

    Example:
        >>> continuous_sparsification_mask(torch.zeros(2), temperature=1.0)
        tensor([0.5000, 0.5000])
    """
    beta = check_temperature(temperature)
    if isinstance(beta, float) and beta == 1.0:
        return torch.sigmoid(mask_params)  # theta * 1.0 == theta: skip a pass forward and backward
    return torch.sigmoid(mask_params * beta)


def continuous_sparsification_hard_mask(mask_params: torch.Tensor) -> torch.Tensor:
    """Hard mask 1[theta > 0] in ``mask_params``' dtype (eq. 6; the temperature -> inf limit)."""
    if mask_params.dtype.is_floating_point and not transformed(mask_params):
        # Compare straight into a float buffer: one pass, ~10x faster on CPU than writing a
        # bool tensor and casting it (out= does not compose with transforms, hence the guard).
        return torch.gt(mask_params.detach(), 0, out=torch.empty_like(mask_params, requires_grad=False))
    return (mask_params > 0).to(mask_params.dtype)


def continuous_sparsification_l0(mask_params: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """The L0 surrogate sum(sigma(beta * theta)) (eq. 5 summed), a 0-d tensor differentiable in theta."""
    return continuous_sparsification_mask(mask_params, temperature=temperature).sum()
