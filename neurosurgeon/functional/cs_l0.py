"""Continuous sparsification's masked weight and L0 surrogate from one sigmoid.

Training minimises task(W * m) + lambda * sum(m) with m = sigma(beta * theta) (Savarese, Silva &
Maire 2020, arXiv 1912.04427, eq. 5 and the L0 surrogate of eq. 6). Computed as two separate
expressions (as NeuroSurgeon 0.1.0 does), the L0 term recomputes the sigmoid in its forward and
sends a second full-size gradient to theta, which autograd then adds to the first: on GPT-2
small that is ~9% of a train step (benchmarks/RESULTS.md, workload 5). Here one forward gives
W * m, m and sum(m), and the backward forms

    d theta = beta * m (1 - m) * (dL/dW' * W + dL/dl0)

in one pass chain, whether the two gradients arrive in the same backward call or in two.
"""

from __future__ import annotations

import torch

from ._checks import check_same_shape, check_temperature, transformed
from .continuous_sparsification import continuous_sparsification_mask
from .layers import apply_mask

__all__ = ["continuous_sparsification_weight_and_l0"]


def continuous_sparsification_weight_and_l0(weight: torch.Tensor, mask_params: torch.Tensor, *,
                                            temperature: float = 1.0):
    """``(W * m, m, sum(m))`` with m = sigma(beta * theta), for a weight-unit mask (theta shaped like W).

    Values equal the separate expressions bitwise, and all three outputs are differentiable;
    gradients agree up to float rounding (the contributions are added before the sigmoid
    derivative is applied, not after). Under
    ``torch.compile``, functorch transforms or without autograd it is the plain composition.

    Example:
        >>> w, theta = torch.ones(2, 2), torch.zeros(2, 2, requires_grad=True)
        >>> w_eff, m, l0 = continuous_sparsification_weight_and_l0(w, theta)
        >>> w_eff.tolist(), l0.item()
        ([[0.5, 0.5], [0.5, 0.5]], 2.0)
    """
    beta = check_temperature(temperature)
    check_same_shape("mask_params", mask_params, "weight", weight)
    if not transformed(weight, mask_params) and torch.is_grad_enabled() and (mask_params.requires_grad or weight.requires_grad):
        return _WeightAndL0.apply(weight, mask_params, beta)
    m = continuous_sparsification_mask(mask_params, temperature=beta)
    return apply_mask(weight, m), m, m.sum()


class _WeightAndL0(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, theta, beta):
        m = continuous_sparsification_mask(theta, temperature=beta)
        # Attributes, not saved tensors: the L0 output's gradient may arrive in a later backward
        # call than the task loss's, after autograd has freed the saved tensors. A detached
        # alias of m (and W, a leaf) makes no reference cycle through this node.
        ctx.m, ctx.weight, ctx.beta = m.detach(), weight, beta
        ctx.set_materialize_grads(False)  # unused outputs get no zero-filled gradient
        return weight * m.to(weight.dtype), m, m.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_weff, grad_m, grad_l0):
        m, weight, beta = ctx.m, ctx.weight, ctx.beta
        t = None if grad_weff is None else (grad_weff * weight).to(m.dtype)
        if grad_m is not None:  # m itself is differentiable too (a user's own regulariser on it)
            t = grad_m.to(m.dtype).clone() if t is None else t.add_(grad_m.to(m.dtype))
        owned = t is not None  # a fresh tensor of this backward's own, not an expanded scalar
        if grad_l0 is not None:
            t = grad_l0.to(m.dtype).expand_as(m) if t is None else t.add_(grad_l0.to(m.dtype))
        grad_theta = None
        if t is not None and ctx.needs_input_grad[1]:
            # Into t itself when it is ours: one theta-sized allocation fewer a step, which on CPU
            # costs first-touch page faults as much as bandwidth (GPT-2 small at one token, where
            # the mask maths is all that separates a step from the unmasked one: 20-40 ms less of
            # ~150-170 ms in two 20-round A/Bs; at 256 tokens the step's noise hides it).
            sigmoid_backward = torch.ops.aten.sigmoid_backward
            grad_theta = sigmoid_backward.grad_input(t, m, grad_input=t) if owned else sigmoid_backward(t, m)
            if beta != 1.0:
                grad_theta.mul_(beta)
        grad_weight = None
        if grad_weff is not None and ctx.needs_input_grad[0]:
            grad_weight = grad_weff * m.to(grad_weff.dtype)
        return grad_weight, grad_theta, None
