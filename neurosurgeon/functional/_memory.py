"""Fresh output buffers whose first touch is cheap.

A kernel that returns a new mask of tens of MB writes memory the process has never touched.
glibc serves allocations that large with ``mmap`` and hands them back with ``munmap``, so every
call faults its output in again, 4 KiB at a time, which can cost several times the write itself.
Advising the buffer's aligned interior to use transparent huge pages (``madvise(MADV_HUGEPAGE)``,
Linux) lets the kernel fault it in 2 MiB at a time, nearly as cheap as writing memory already
touched (``benchmarks/NOTES.md`` has the figures). The advice covers only the buffer itself,
changes no value, and is skipped wherever it does not apply (another OS, another device, a small
buffer, huge pages disabled).
"""

from __future__ import annotations

import ctypes
import sys

import torch

__all__ = ["fresh_empty"]

_HUGE = 2**21  # x86-64 and arm64 transparent huge page size
_MADV_HUGEPAGE = 14
#: Below this a buffer spans at most one huge page: the advice would not pay for its system call.
MIN_BYTES = 4 * _HUGE


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def fresh_empty(shape, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``, advised to use huge pages when it is a
    large CPU buffer (see the module docstring). Its contents are undefined, as ``torch.empty``'s."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _MADVISE is None or out.device.type != "cpu" or out.nbytes < MIN_BYTES:
        return out
    start = -(-out.data_ptr() // _HUGE) * _HUGE
    stop = (out.data_ptr() + out.nbytes) // _HUGE * _HUGE
    if stop > start:
        _MADVISE(start, stop - start, _MADV_HUGEPAGE)  # advice only: a refusal (EINVAL) changes nothing
    return out
