"""A fused hard-concrete training kernel: noise, gate, ``W * z`` and the L0 term in one compiled kernel.

Eager torch runs each element-wise op as its own pass over memory, so one hard-concrete
training forward costs ~130 passes of Threefry (the noise) plus ~10 for the gate of Louizos,
Welling & Kingma (2018, arXiv 1712.01312, eq. 9-10) and its backward, and the expected L0
(eq. 12) two more passes and two theta-sized temporaries. Compiled by ``torch.compile``
(Inductor), the forward becomes one vectorised loop and the backward another (an
``autograd.Function`` around compiled kernels): on a 768x3072 weight, ~4-5 ms forward (~6 ms
for a temperature that is not 2 / k, below) and ~1 ms backward instead of ~30 ms
(benchmarks/RESULTS.md, workload 1). The layer's
:meth:`~neurosurgeon.modules.MaskLayer.calculate_l0` returns the forward's L0 term, and a loss
holding both sends theta one gradient, formed in one pass.

The kernel draws the same noise words from the same key as
:func:`~neurosurgeon.functional.hard_concrete_mask` and applies the same gate; the float results
agree to ~1e-7 (it forms the logistic noise as log(u / (1 - u)), one logarithm instead of two,
and compiled transcendentals may round the last bit differently). For a temperature beta = 2 / k
with k an integer up to 8 (the default 2/3 is k = 3) the forward has no logarithm: the gate's
exponential is a k-th power of sqrt((1 - u) / u) exp(-theta / 2), whose square also gives eq. 12
(:func:`_power_gate_forward`; gates agree to ~4e-7). It is an implementation choice of the
module shells, never a different mask:

- ``auto`` (the default): used for weight-unit masks of at least ``min_numel`` entries while
  training with autograd on eager tensors; the one compilation (~15 s on 2 CPU cores, cached
  on disk by Inductor afterwards) then pays for itself within a few dozen steps. If compiling
  fails (no C++ compiler, no Triton), one warning, and the eager path from then on.
- ``always``: every eligible layer, whatever its size; a compile failure raises.
- ``never``: the eager path only.

Set the mode with :func:`fused_kernels` or the ``NEUROSURGEON_FUSED`` environment variable.
Inside ``torch.compile`` and functorch transforms (``vmap``, ``grad``) the eager functions run:
the outer transform sees, and fuses, them itself.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from ._checks import check_choice, transformed
from .hard_concrete import l0_shift, noise_uniform, nonzero_probability, stretch_and_clamp, stretched_gate

__all__ = [
    "FUSED_MODES", "MAX_GATE_POWER", "fused_kernels", "fused_settings", "fused_eligible", "fused_hard_concrete_weight",
    "gate_power",
]

_log = logging.getLogger(__name__)

FUSED_MODES = ("auto", "always", "never")
ENV_VAR = "NEUROSURGEON_FUSED"
#: Below ~250k entries (toy models, tests) the eager path costs ~1 ms a step: not worth a compilation.
DEFAULT_MIN_NUMEL = 2**18

_settings: dict = {"mode": None, "min_numel": DEFAULT_MIN_NUMEL}
_failed: list[str] = []  # why compiling failed in ``auto`` mode (then the eager path is used)
_compiled: dict = {}


def _mode() -> str:
    if _settings["mode"] is None:
        value = os.environ.get(ENV_VAR, "auto").strip().lower()
        _settings["mode"] = check_choice(ENV_VAR, value, FUSED_MODES)
    return _settings["mode"]


def fused_settings() -> dict:
    """The current settings: ``{"mode", "min_numel", "failed"}`` (``failed``: why the kernel
    could not be compiled in ``auto`` mode, or None)."""
    return {"mode": _mode(), "min_numel": _settings["min_numel"], "failed": _failed[0] if _failed else None}


class fused_kernels:
    """Set when the module shells use the fused hard-concrete kernel; also a context manager
    that restores the previous settings on exit (like ``torch.set_grad_enabled``).

    Args:
        mode: ``auto``, ``always`` or ``never`` (see the module docstring).
        min_numel: the smallest weight ``auto`` fuses (default 2**18); unchanged when None.

    Example:
        >>> from neurosurgeon.functional.fused import fused_kernels, fused_settings
        >>> with fused_kernels("never"):
        ...     fused_settings()["mode"]
        'never'
    """

    def __init__(self, mode: str, *, min_numel: int | None = None):
        mode = check_choice("mode", mode, FUSED_MODES)
        if min_numel is not None:
            if isinstance(min_numel, bool) or not isinstance(min_numel, int):
                raise TypeError(f"min_numel must be a non-negative int, got {min_numel!r} ({type(min_numel).__name__})")
            if min_numel < 0:
                raise ValueError(f"min_numel must be a non-negative int, got {min_numel!r}")
        self._previous = (_mode(), _settings["min_numel"], list(_failed))
        _settings["mode"] = mode
        if min_numel is not None:
            _settings["min_numel"] = min_numel
        if mode == "always":
            _failed.clear()  # asked for explicitly: try again, and raise if it still fails

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _settings["mode"], _settings["min_numel"], failed = self._previous
        _failed[:] = failed
        return False


def fused_eligible(weight: torch.Tensor, log_alpha: torch.Tensor) -> bool:
    """Whether the module shells compute this weight's training gate with the fused kernel."""
    mode = _mode()
    if mode == "never" or (_failed and mode == "auto"):
        return False
    if transformed(weight, log_alpha):
        return False
    if not (torch.is_grad_enabled() and log_alpha.requires_grad):
        return False  # inference-mode calls would compile a second graph for little gain
    if log_alpha.shape != weight.shape or log_alpha.device != weight.device or weight.device.type not in ("cpu", "cuda"):
        return False  # neuron masks are small: the eager path is cheap there
    return mode == "always" or log_alpha.numel() >= _settings["min_numel"]


def _gate_forward(weight, log_alpha, key, beta, scale, left, shift):
    """(W * z, z, L0): noise u from ``key``, then eq. 9-10, and the expected L0 of eq. 12 (the
    same functions as the eager path). The L0 term reads theta in the same loop: done apart, it
    writes two theta-sized temporaries a step, which on CPU cost first-touch page faults."""
    u = noise_uniform(key, (log_alpha.shape[0],))
    # log(u / (1 - u)): one logarithm instead of log u - log1p(-u)'s two (the kernel is bound by
    # its transcendentals); 1 - u is exact for u >= 1/2, so the two agree to ~1e-7 relative.
    z = stretched_gate(torch.log(u / (1.0 - u)).to(log_alpha.dtype), log_alpha, beta, scale, left)
    return weight * z.to(weight.dtype), z, _l0_sum(nonzero_probability(log_alpha, shift), log_alpha.dtype)


def _l0_sum(p, dtype):
    """sum(p) in ``dtype``, summed in float64: a compiled reduction adds each vector lane's terms in
    sequence, which in float32 drifts by ~1e-4 relative over a GPT-2 layer (eager torch.sum sums
    in a cascade)."""
    return p.to(torch.float64).sum().to(dtype)


#: The largest k = 2 / beta with a power-form forward kernel (beta = 2, 1, 2/3, 1/2, ..., 1/4).
MAX_GATE_POWER = 8


def gate_power(temperature: float, dtype: torch.dtype) -> int | None:
    """k when ``temperature`` = 2 / k for an integer 1 <= k <= :data:`MAX_GATE_POWER` and theta is
    float32 (the default 2/3 is k = 3): the forward then takes :func:`_power_gate_forward`. Else None."""
    k = round(2.0 / temperature)
    if dtype != torch.float32 or not 1 <= k <= MAX_GATE_POWER or abs(2.0 / temperature - k) > 1e-9 * k:
        return None
    return k


def _power_gate_forward(k: int):
    """The forward of :func:`_gate_forward` for beta = 2 / k, with no logarithm and one exponential.

    With r = (1 - u) / u and h = exp(-theta / 2), the gate's exp(-(log(u / (1 - u)) + theta) / beta)
    is (sqrt(r) h)^k, so s = 1 / (1 + (sqrt(r) h)^k) (eq. 9); eq. 12's exp(shift - theta) is
    exp(shift) h^2, so P(z != 0) = 1 / (1 + exp(shift) h^2). A square root and k products replace
    a logarithm and an exponential: over GPT-2's 85M gates the forward takes ~125 ms instead of
    ~185 ms (2 threads; ~67 ms of either is the noise). Overflow only saturates: h or the power
    reaching inf gives s = 0 and P = 0, their limits, and sqrt(r) lies in [1e-3, 1e3] (u is drawn
    from [1e-6, 1 - 1e-6]), so no 0 * inf. z agrees with the eager gate to ~4e-7.
    """

    def forward(weight, log_alpha, key, beta, scale, left, shift):
        u = noise_uniform(key, (log_alpha.shape[0],))
        h = torch.exp(log_alpha * -0.5)
        q = torch.sqrt((1.0 - u) / u) * h
        q_k = q
        for _ in range(k - 1):  # unrolled at compile time: k is fixed per kernel
            q_k = q_k * q
        z = stretch_and_clamp(1.0 / (1.0 + q_k), scale, left)
        p = 1.0 / (1.0 + torch.exp(shift) * (h * h))  # P(z != 0), sharing the gate's exponential
        return weight * z.to(weight.dtype), z, _l0_sum(p, log_alpha.dtype)

    return forward


def _gate_backward(grad_weff, weight, z, beta, scale, left):
    """d loss / d theta from z alone. Inside the clamp, dz/dtheta = scale * s (1 - s) / beta with
    s = (z - l) / scale, i.e. (z - l)(r - z) / (scale * beta), r = l + scale; outside it, 0. Saving
    z (an output anyway) instead of s halves what the forward writes for the backward."""
    g = (grad_weff * weight).to(z.dtype)
    inside = (z > 0) & (z < 1)
    return torch.where(inside, g * ((z - left) * (scale + left - z) / (scale * beta)), 0.0)


def _l0_backward(grad_l0, log_alpha, shift):
    """d (grad_l0 * L0) / d theta = grad_l0 * p (1 - p), p = P(z != 0) recomputed from theta."""
    p = nonzero_probability(log_alpha, shift)
    return grad_l0 * p * (1.0 - p)


def _gate_and_l0_backward(grad_weff, weight, z, beta, scale, left, grad_l0, log_alpha, shift):
    """Both gradients of theta in one pass: what a task loss plus lambda * L0 sends back."""
    return _gate_backward(grad_weff, weight, z, beta, scale, left) + _l0_backward(grad_l0, log_alpha, shift)


_KERNELS = {"forward": _gate_forward, "backward": _gate_backward, "backward_l0": _gate_and_l0_backward,
            **{f"forward_k{k}": _power_gate_forward(k) for k in range(1, MAX_GATE_POWER + 1)}}


def _compiled_kernel(which: str):
    """The compiled kernel ``which`` (a key of ``_KERNELS``). dynamic=True: one graph for every layer
    size (inputs are flattened, so for every layer kind too). Both run without autograd."""
    if which not in _compiled:
        # Say why the first large hard-concrete step pauses (a user might think it hangs).
        _log.info("compiling the fused hard-concrete %s kernel (once per process; %s=never skips it)", which, ENV_VAR)
        _compiled[which] = torch.compile(_KERNELS[which], dynamic=True, fullgraph=True)
    return _compiled[which]


def _run(which: str, *args):
    if not _failed:
        try:
            return _compiled_kernel(which)(*args)
        except Exception as e:  # compiler missing or broken: the result must not depend on it
            if _mode() == "always":
                raise
            _failed[:] = [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
            warnings.warn(f"neurosurgeon: the fused hard-concrete kernel could not be compiled ({_failed[0]}); "
                          f"using the eager path. Set {ENV_VAR}=never to silence this.", RuntimeWarning, stacklevel=4)
    return _KERNELS[which](*args)


class _FusedGate(torch.autograd.Function):
    """Forward and backward of (W * z, z, L0) as compiled kernels (Louizos et al. 2018, eq. 9-10, 12)."""

    @staticmethod
    def forward(ctx, weight, log_alpha, key, beta, scale, left, shift, power):
        which = "forward" if power is None else f"forward_k{power}"
        w_eff, z, l0 = _run(which, weight, log_alpha, key, beta, scale, left, shift)
        # Attributes, not saved tensors: the L0 output's gradient may arrive in a later backward
        # call than the task loss's, after autograd has freed saved tensors. Detached aliases make
        # no reference cycle through this node; theta's version stands in for autograd's check.
        ctx.z, ctx.weight, ctx.log_alpha = z.detach(), weight.detach(), log_alpha.detach()
        ctx.version = log_alpha._version
        ctx.hparams = (beta, scale, left, shift)
        ctx.set_materialize_grads(False)  # unused outputs (z, often L0) get no zero-filled gradient
        return w_eff, z, l0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_weff, grad_z, grad_l0):
        weight, z, theta = ctx.weight, ctx.z, ctx.log_alpha
        beta, scale, left, shift = ctx.hparams
        g_theta = g_weight = None
        if ctx.needs_input_grad[1]:
            if grad_l0 is not None and theta._version != ctx.version:
                raise RuntimeError("hard concrete L0: the mask parameters were modified in place between the "
                                   "forward and this backward; compute the L0 term again after the update")
            if grad_weff is not None and grad_l0 is not None:
                g_theta = _run("backward_l0", grad_weff, weight, z, beta, scale, left, grad_l0, theta, shift)
            elif grad_weff is not None:
                g_theta = _run("backward", grad_weff, weight, z, beta, scale, left)
            elif grad_l0 is not None:  # the L0 term alone (its own backward call): a cheap eager pass
                g_theta = _l0_backward(grad_l0, theta, shift)
            if grad_z is not None:  # a loss on weight_mask itself: the eager formula, W = 1
                g_z = _gate_backward(grad_z, torch.ones((), dtype=z.dtype, device=z.device), z, beta, scale, left)
                g_theta = g_z if g_theta is None else g_theta + g_z
        if ctx.needs_input_grad[0] and grad_weff is not None:
            g_weight = grad_weff * z.to(grad_weff.dtype)
        return g_weight, g_theta, None, None, None, None, None, None


def fused_hard_concrete_weight(weight, log_alpha, key, *, temperature, left, right):
    """``(W * z, z, L0)`` for a weight-unit hard-concrete gate z drawn from ``key``, and its
    expected L0 (eq. 12, :func:`~neurosurgeon.functional.hard_concrete_l0`), by the fused kernel;
    falls back to the eager functions (with one warning) if compiling fails in ``auto`` mode.

    ``key`` is the weight's draw key (``draw_keys(noise_key(...))[0]``), as
    :func:`~neurosurgeon.functional.layer_masks` uses it; hyper-parameters are checked by the caller.
    """
    shape = weight.shape
    hp = dict(dtype=log_alpha.dtype, device=log_alpha.device)
    args = (weight.reshape(-1), log_alpha.reshape(-1), key, torch.tensor(float(temperature), **hp),
            torch.tensor(float(right) - float(left), **hp), torch.tensor(float(left), **hp),
            torch.tensor(l0_shift(float(temperature), float(left), float(right)), **hp))
    w, z, l0 = _FusedGate.apply(*args, gate_power(float(temperature), log_alpha.dtype))
    return w.view(shape), z.view(shape), l0
