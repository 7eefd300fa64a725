"""Continuous sparsification masks (Savarese, Silva & Maire 2020, arXiv 1912.04427).

The soft mask is m = sigma(beta * s) (eq. 5, with s the mask parameters and beta the temperature
annealed upward during training); its sum is the L0 surrogate the loss penalises; the hard mask
it converges to is m = 1[s > 0] (eq. 6, the beta -> inf limit).
"""

from __future__ import annotations

import torch

from ._checks import check_finite, check_temperature, transformed

__all__ = ["continuous_sparsification_mask", "continuous_sparsification_hard_mask", "continuous_sparsification_l0"]

#: The paper's defaults: beta starts at 1, theta at 0 (every mask entry at sigma(0) = 0.5).
TEMPERATURE = 1.0
MASK_INIT_VALUE = 0.0


def continuous_sparsification_init(mask_init_value: float = MASK_INIT_VALUE) -> float:
    """The initial value of every mask parameter (any finite value; 0 puts every mask at 0.5)."""
    return check_finite("mask_init_value", mask_init_value)


def continuous_sparsification_mask(mask_params: torch.Tensor, *, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Soft mask sigma(beta * theta) (eq. 5), in [0, 1], same shape and dtype as ``mask_params``.

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
    """Hard mask 1[theta > 0] (eq. 6) in ``mask_params``' dtype.

    Example:
        >>> continuous_sparsification_hard_mask(torch.tensor([-1.0, 0.0, 2.0]))
        tensor([0., 0., 1.])
    """
    if mask_params.dtype.is_floating_point and not transformed(mask_params):
        # Compare straight into a float buffer: one pass instead of a bool tensor and a cast
        # (out= does not compose with transforms, hence the guard).
        return torch.gt(mask_params.detach(), 0, out=torch.empty_like(mask_params, requires_grad=False))
    return (mask_params > 0).to(mask_params.dtype)


def continuous_sparsification_l0(mask_params: torch.Tensor, *, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The L0 surrogate sum(sigma(beta * theta)) (eq. 5 summed), a 0-d tensor differentiable in theta.

    Example:
        >>> continuous_sparsification_l0(torch.zeros(4)).item()
        2.0
    """
    return continuous_sparsification_mask(mask_params, temperature=temperature).sum()
