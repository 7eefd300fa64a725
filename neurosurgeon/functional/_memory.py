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
import math
import sys

import torch

from ._checks import transformed

__all__ = ["fresh_empty", "product"]

_HUGE = 2**21  # x86-64 and arm64 transparent huge page size
_MADV_HUGEPAGE = 14
#: Below this a buffer spans at most one huge page: the advice would not pay for its system call.
MIN_BYTES = 2 * _HUGE


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


def _plain(t: torch.Tensor) -> bool:
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b``; a large CPU product that needs no gradient is written into a :func:`fresh_empty`
    buffer (a masked weight per baseline key is such a product). ``vmap`` batches it; under
    ``torch.compile``, on other devices, for tensor subclasses and where autograd must record
    the product it is the plain ``a * b``, so a compiled graph still fuses it."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    nbytes = math.prod(shape) * torch.empty((), dtype=torch.promote_types(a.dtype, b.dtype)).element_size()
    if (_MADVISE is None or nbytes < MIN_BYTES or a.device.type != "cpu" or torch.compiler.is_compiling()
            or not (_plain(a) and _plain(b)) or (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))):
        return a * b
    return _product_op(a, b)


@torch.library.custom_op("neurosurgeon::fresh_product", mutates_args=())
def _product_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = fresh_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)
    return torch.mul(a, b, out=out)


@_product_op.register_fake
def _(a, b):
    return torch.empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)


def _batched_product(info, in_dims, a, b):
    # Batch dimension first, each operand's own dimensions right-aligned to the broadcast shape.
    logical = [t.shape if d is None else t.shape[:d] + t.shape[d + 1:] for t, d in ((a, in_dims[0]), (b, in_dims[1]))]
    shape = torch.broadcast_shapes(*logical)
    a, b = (t if d is None else t.movedim(d, 0).reshape(info.batch_size, *[1] * (len(shape) - len(s)), *s)
            for t, d, s in zip((a, b), in_dims, logical))
    if transformed(a, b):  # nested vmap: the next level batches the plain product
        return a * b, 0
    out = fresh_empty((info.batch_size, *shape), dtype=torch.promote_types(a.dtype, b.dtype), device=a.device)
    return torch.mul(a, b, out=out), 0


torch.library.register_vmap(_product_op, _batched_product)
