"""A compiled hard-concrete training gate for large layers, built off the critical path.

Eager torch runs the gate's noise (20 rounds of Threefry) and eq. 9-10 of Louizos et al. (2018)
as ~130 separate passes over memory; ``torch.compile`` fuses the very same function
(:func:`neurosurgeon.functional.hard_concrete_mask`, no second copy of the formula) into one
loop forward and one backward. Compiling takes seconds to tens of seconds, so it never happens
in a training step: the first eligible step starts a background thread that compiles and warms
the kernel on a small stand-in, and steps run eagerly until it is ready. Results agree with
the eager path to float rounding; the noise words are the same integers.

A shell-side speed choice only: the functional core stays eager and pure, and under
``torch.compile`` or ``torch.func`` transforms the shells call it directly.
"""

from __future__ import annotations

import threading
import warnings

import torch

from ..functional.hard_concrete import hard_concrete_mask

__all__ = ["compiled_gate", "wait_for_compiled_gates", "MIN_NUMEL"]

#: Below this many gates a step's eager gate costs about a millisecond: not worth a compilation.
MIN_NUMEL = 2**18

_lock = threading.Lock()
_ready: dict[tuple, object] = {}
_threads: dict[tuple, threading.Thread] = {}
_failed: list[str] = []


def _masked_weight(weight, log_alpha, key, **hparams):
    """(W * z, z): the gate of :func:`~neurosurgeon.functional.hard_concrete_mask` applied, in one kernel."""
    z = hard_concrete_mask(log_alpha, key, **hparams)
    return weight * z.to(weight.dtype), z


def _signature(weight: torch.Tensor, log_alpha: torch.Tensor, hparams: dict) -> tuple:
    return (weight.dtype, weight.requires_grad, log_alpha.dtype, log_alpha.device.type,
            tuple(sorted(hparams.items())))


def _build(sig: tuple, device: torch.device) -> None:
    w_dtype, w_grad, dtype, _, hp = sig
    try:
        fn = torch.compile(_masked_weight, dynamic=True, fullgraph=True)
        # Warm forward and backward on stand-ins of the same kind (sizes are symbolic).
        w = torch.ones(64, 48, dtype=w_dtype, device=device, requires_grad=w_grad)
        t = torch.zeros(64, 48, dtype=dtype, device=device, requires_grad=True)
        fn(w, t, torch.zeros(2, dtype=torch.int64, device=device), **dict(hp))[0].sum().backward()
        with _lock:
            _ready[sig] = fn
    except Exception as e:  # no compiler, no Triton: the eager path is the same function
        with _lock:
            _failed.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        warnings.warn(f"neurosurgeon: the compiled hard-concrete gate is unavailable ({_failed[-1]}); "
                      "training stays on the eager path", RuntimeWarning, stacklevel=2)


def compiled_gate(weight: torch.Tensor, log_alpha: torch.Tensor, hparams: dict):
    """The compiled ``(W * z, z)`` for a weight-unit theta of this kind if it is ready, else None
    (and, the first time, start building it in the background)."""
    if (_failed or log_alpha.numel() < MIN_NUMEL or log_alpha.shape != weight.shape
            or log_alpha.device.type not in ("cpu", "cuda")):
        return None
    sig = _signature(weight, log_alpha, hparams)
    fn = _ready.get(sig)
    if fn is None:
        with _lock:
            if sig not in _threads:
                _threads[sig] = threading.Thread(target=_build, args=(sig, log_alpha.device), daemon=True,
                                                 name="neurosurgeon-compile")
                _threads[sig].start()
    return fn


def wait_for_compiled_gates(timeout: float | None = None) -> bool:
    """Block until every compilation started so far has finished; True if all succeeded
    (benchmarks time warm steps only after this)."""
    for t in list(_threads.values()):
        t.join(timeout)
    return not _failed and all(not t.is_alive() for t in _threads.values())
