"""A compiled hard-concrete training gate for large layers, built off the critical path.

Eager torch runs the gate's noise (20 rounds of Threefry) and eq. 9-10 of Louizos et al. (2018)
as ~130 separate passes over memory; ``torch.compile`` fuses the very same function
(:func:`neurosurgeon.functional.hard_concrete_mask` and ``W * z``, no second copy of the formula)
into one loop forward and one backward. A cold compilation takes tens of seconds, so it never
happens in a training step: the second step of a large theta starts a separate Python process that
compiles a small stand-in of the same kind, filling Inductor's on-disk caches, while steps run
eagerly. Once it has finished, the next step compiles here from those caches (seconds) and
uses the kernel from then on. A process, not a thread: a compilation in progress makes
``torch.compiler.is_compiling()`` read True in every thread of its process, which would turn
eager code into traced code. Not the first step: a one-off forward never pays for a compilation.
Results agree with the eager path to float rounding; the noise words are the same integers.

A shell-side speed choice only: the functional core stays eager and pure, and under
``torch.compile`` or ``torch.func`` transforms the shells call it directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings

import torch

from ..functional.hard_concrete import hard_concrete_mask

__all__ = ["compiled_gate", "wait_for_compiled_gates", "MIN_NUMEL"]

#: Below this many gates a step's eager gate costs about a millisecond: not worth a compilation.
MIN_NUMEL = 2**18

_ready: dict[tuple, object] = {}
_seen: set[tuple] = set()
_building: dict[tuple, tuple] = {}  # signature -> (process, device, its stderr file)
_failed: list[str] = []


def _masked_weight(weight, log_alpha, key, **hparams):
    """(W * z, z): the gate of :func:`~neurosurgeon.functional.hard_concrete_mask` applied, in one kernel."""
    z = hard_concrete_mask(log_alpha, key, **hparams)
    return weight * z.to(weight.dtype), z


def _signature(weight: torch.Tensor, log_alpha: torch.Tensor, hparams: dict) -> tuple:
    return (str(weight.dtype).removeprefix("torch."), weight.requires_grad, str(log_alpha.dtype).removeprefix("torch."),
            log_alpha.device.type, tuple(sorted(hparams.items())))


def _compile(sig: tuple, device: str):
    """Compile and warm forward and backward on stand-ins of this kind (sizes are symbolic)."""
    w_dtype, w_grad, dtype, _, hp = sig
    fn = torch.compile(_masked_weight, dynamic=True, fullgraph=True)
    w = torch.ones(64, 48, dtype=getattr(torch, w_dtype), device=device, requires_grad=w_grad)
    t = torch.zeros(64, 48, dtype=getattr(torch, dtype), device=device, requires_grad=True)
    fn(w, t, torch.zeros(2, dtype=torch.int64, device=device), **dict(hp))[0].sum().backward()
    return fn


def _start(sig: tuple, device: str) -> tuple:
    code = f"from neurosurgeon.modules._compiled import _compile; _compile({sig!r}, {device!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    err = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child would block on a full pipe
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=err), device, err


def _finish(sig: tuple) -> None:
    """The background build of ``sig`` has exited: compile here from the warm caches, or give up."""
    proc, device, err = _building.pop(sig)
    try:
        if proc.returncode != 0:
            err.seek(0)
            last = (err.read().strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise RuntimeError(f"the compiling process failed: {last}")
        _ready[sig] = _compile(sig, device)
    except Exception as e:  # no compiler, no Triton: the eager path is the same function
        _failed.append(f"{type(e).__name__}: {e}")
        warnings.warn(f"neurosurgeon: the compiled hard-concrete gate is unavailable ({_failed[-1]}); "
                      "training stays on the eager path", RuntimeWarning, stacklevel=3)
    finally:
        err.close()


def compiled_gate(weight: torch.Tensor, log_alpha: torch.Tensor, hparams: dict):
    """The compiled ``(W * z, z)`` for a weight-unit theta of this kind if it is ready, else None.
    The second step of any theta of this kind starts building it in the background."""
    if (_failed or log_alpha.numel() < MIN_NUMEL or log_alpha.shape != weight.shape
            or log_alpha.device.type not in ("cpu", "cuda")):
        return None
    sig = _signature(weight, log_alpha, hparams)
    if sig in _ready:
        return _ready[sig]
    if (sig, id(log_alpha)) not in _seen:
        _seen.add((sig, id(log_alpha)))  # a theta's first training step runs eagerly and starts nothing
    elif sig not in _building:
        _building[sig] = _start(sig, str(log_alpha.device))
    elif _building[sig][0].poll() is not None:
        _finish(sig)
    return _ready.get(sig)


def wait_for_compiled_gates(timeout: float | None = None) -> bool:
    """Block until every build started so far is ready here; True if all succeeded
    (benchmarks time warm steps only after this)."""
    for sig in list(_building):
        try:
            _building[sig][0].wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        _finish(sig)
    return not _failed and not _building
