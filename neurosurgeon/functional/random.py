"""Explicit, counter-based random numbers in pure torch (JAX-style keys).

A key is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words. Every random function
is a pure function of its key: the same key gives the same numbers on every run and device,
and ``torch.func.vmap`` over a batch of keys of shape ``(K, 2)`` gives the K draws a loop
would. Nothing here reads or advances torch's global generator.

The block cipher is Threefry-2x32 with 20 rounds from Salmon, Moraes, Dror & Shaw,
"Parallel random numbers: as easy as 1, 2, 3" (SC 2011), the generator JAX uses; it is
checked against the Random123 known-answer vectors in the tests.

Sharded draws: ``bits``, ``uniform`` and ``normal`` take ``entries=(start, stop)`` and return
only the flat entries ``start .. stop - 1`` of the full draw, bit for bit, at a cost proportional
to ``stop - start``; :func:`local_entries` gives the range a ``DTensor`` shard holds. The union
of the shards' draws is therefore the unsharded draw, for any number of shards.

Example:
    >>> from neurosurgeon.functional import random as nr
    >>> k = nr.key(0)
    >>> k_mask, k_noise = nr.split(k, 2)
    >>> u = nr.uniform(k_noise, (3, 4))
    >>> bool((u >= 0).all() and (u < 1).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._checks import check_key, transformed

__all__ = ["key", "split", "fold_in", "bits", "uniform", "normal", "threefry2x32", "local_entries"]

_MASK32 = 0xFFFFFFFF
_SPLIT_DOMAIN = -(2**31)  # high counter word 0x80000000 as int32
_PARITY = 0x1BD11BDA  # Threefish key-schedule parity constant (Random123, threefry.h)
_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)  # Threefry-2x32 rotation constants R_32x2
_ROUNDS = 20
# Per rotation r: the right shift and the mask of its low bits, (32 - r, 2**r - 1), of rotl(x, r)'s
# logical shift; on CPU as 0-d int32 tensors: a Python int operand is wrapped in an int64 tensor and
# cast to int32 on every op, which doubles the dispatch cost of a short draw.
_ROTATION_INTS = tuple((32 - r, (1 << r) - 1) for r in _ROTATIONS)
_ROTATION_OPERANDS = tuple(tuple(torch.tensor(v, dtype=torch.int32) for v in ints) for ints in _ROTATION_INTS)


def _to_i32(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret non-negative 32-bit words held in int64 as two's-complement int32."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _to_u32(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret int32 words as their unsigned value in int64."""
    return x.to(torch.int64) & _MASK32


def _threefry_i32(k0: torch.Tensor, k1: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor):
    """Threefry-2x32-20 on int32 words (wrap-around arithmetic).

    In place after the first key injection: torch eager does not fuse element-wise ops, and
    reusing buffers is far faster than allocating (and page-faulting) a tensor per op. When no
    transform is active, the rotation's low bits go to a scratch buffer and one add puts the
    high bits on them (five passes a round, not six).
    """
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = c0 + ks[0]
    x1 = c1 + ks[1]
    plain = not transformed(x1)
    scratch = torch.empty_like(x1) if plain else None
    cpu_operands = plain and x1.device.type == "cpu"
    for i in range(_ROUNDS):
        r = _ROTATIONS[i % 8]
        right, low = (_ROTATION_OPERANDS if cpu_operands else _ROTATION_INTS)[i % 8]
        x0.add_(x1)
        # int32 shifts are arithmetic: mask off the sign-extended bits for a logical shift.
        if plain:
            # rotl(x, r) = (x >>> (32 - r)) + x * 2**r in wrap-around int32: the two parts share no
            # bits, so their sum is their or, and one add with alpha stands for a shift and an or
            low_bits = torch.bitwise_right_shift(x1, right, out=scratch).bitwise_and_(low)
            torch.add(low_bits, x1, alpha=1 << r, out=x1)
        else:  # out= does not compose with vmap, and torch.compile fuses the chain anyway
            high = x1 << r
            x1.bitwise_right_shift_(right).bitwise_and_(low).bitwise_or_(high)
        x1.bitwise_xor_(x0)
        if i % 4 == 3:  # key injection s after every 4 rounds
            s = i // 4 + 1
            x0.add_(ks[s % 3])
            x1.add_(ks[(s + 1) % 3] + s)
    return x0, x1


def _threefry_words(k0: int, k1: int, c0: int, c1: int) -> tuple[int, int]:
    """Threefry-2x32-20 of one counter on Python ints: deriving a key (``split``, ``fold_in``) as
    ~100 tensor ops on two words would cost far more in dispatch than the arithmetic itself."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = (c0 + k0) & _MASK32, (c1 + k1) & _MASK32
    for i in range(_ROUNDS):
        r = _ROTATIONS[i % 8]
        x0 = (x0 + x1) & _MASK32
        x1 = (((x1 << r) | (x1 >> (32 - r))) & _MASK32) ^ x0
        if i % 4 == 3:
            s = i // 4 + 1
            x0 = (x0 + ks[s % 3]) & _MASK32
            x1 = (x1 + ks[(s + 1) % 3] + s) & _MASK32
    return x0, x1


def _host_words(*tensors: torch.Tensor) -> bool:
    """True when key words can be read on the host: eager CPU tensors (no device sync, no
    transform that a Python int would escape)."""
    return not transformed(*tensors) and all(t.device.type == "cpu" for t in tensors)


def threefry2x32(key_: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Threefry-2x32-20 block function (Salmon et al. 2011, Random123 ``threefry2x32``).

    Args:
        key_: int64 tensor ``(2,)`` of 32-bit words (k0, k1).
        counter: int64 tensor ``(..., 2)`` of 32-bit words (c0, c1).

    Returns:
        int64 tensor ``(..., 2)``: the encrypted words (y0, y1), each in [0, 2**32).
    """
    check_key(key_)
    if counter.dtype != torch.int64 or counter.shape[-1:] != (2,):
        raise ValueError(f"counter must be an int64 tensor of shape (..., 2), got {counter.dtype} {tuple(counter.shape)}")
    k = _to_i32(key_)
    c = _to_i32(counter)
    y0, y1 = _threefry_i32(k[0], k[1], c[..., 0], c[..., 1])
    return torch.stack([_to_u32(y0), _to_u32(y1)], dim=-1)


def key(seed: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Make a key from an integer seed (as ``jax.random.key``): words (seed >> 32, seed & 0xFFFFFFFF).

    Args:
        seed: a Python int in [-2**63, 2**64).
        device: where the key lives (default: CPU); draws happen on the key's device.

    Returns:
        int64 tensor of shape ``(2,)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be a Python int, got {seed!r} ({type(seed).__name__})")
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
    seed %= 2**64
    return torch.tensor([seed >> 32, seed & _MASK32], dtype=torch.int64, device=device)


#: Counters per block of the eager word stream: a block's ~120 int32 passes then stay in the
#: CPU cache instead of streaming the whole draw through memory once per pass (several times faster).
_BLOCK = 2**18


def _words_i32(key_: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """Words ``start .. start + n - 1`` of the key's stream, as int32.

    The stream is the one layout every draw reads: word 2i is the first output of Threefry at
    counter (i, 0), word 2i + 1 the second. Any slice of it can be drawn on its own (a shard
    draws only the words of the entries it holds), and a prefix never depends on its length.

    ``key_`` may also be a batch of keys ``(K, 2)``: then ``(K, n)``, row i the words of key i,
    drawn by shared ops (eager torch pays a dispatch per op, so a few keys per op are cheaper).
    """
    if n < 0 or start < 0:
        raise ValueError(f"word range must be non-negative, got start={start}, n={n}")
    first, last = start // 2, (start + n + 1) // 2  # counters covering the range
    if last >= 2**31:
        raise ValueError(f"cannot draw words beyond {2**32 - 2} from one key (asked up to {start + n})")
    k = _to_i32(key_)
    batch = tuple(key_.shape[:-1])
    k0, k1 = (k[..., 0:1], k[..., 1:2]) if batch else (k[0], k[1])  # a batch's key words broadcast over counters
    block = max(1, _BLOCK // math.prod(batch))
    if transformed(key_) or last - first <= block:
        c0 = torch.arange(first, last, dtype=torch.int32, device=key_.device)
        y0, y1 = _threefry_i32(k0, k1, c0, torch.zeros_like(c0))
        pairs = torch.stack((y0, y1), dim=-1)
    else:
        pairs = torch.empty((*batch, last - first, 2), dtype=torch.int32, device=key_.device)
        for lo in range(first, last, block):
            c0 = torch.arange(lo, min(lo + block, last), dtype=torch.int32, device=key_.device)
            y0, y1 = _threefry_i32(k0, k1, c0, torch.zeros_like(c0))
            pairs[..., lo - first: lo - first + c0.numel(), :] = torch.stack((y0, y1), dim=-1)
    offset = start - 2 * first
    return pairs.reshape(*batch, -1)[..., offset: offset + n]


def split(key_: torch.Tensor, num: int = 2) -> torch.Tensor:
    """Split a key into ``num`` independent keys (as ``jax.random.split``).

    Returns:
        int64 tensor ``(num, 2)``; index it (``k1, k2 = split(k)``) to get single keys.
    """
    check_key(key_)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if num <= 64 and _host_words(key_):
        k0, k1 = (w & _MASK32 for w in key_.tolist())
        return torch.tensor([_threefry_words(k0, k1, i, 2**31) for i in range(num)], dtype=torch.int64)
    k = _to_i32(key_)
    c0 = torch.arange(num, dtype=torch.int32, device=key_.device)
    # Counters (i, 2**31): a domain fold_in (high word < 2**31) never reaches, so
    # split(k, n)[i] and fold_in(k, d) are different keys for every i and d.
    y0, y1 = _threefry_i32(k[0], k[1], c0, torch.full_like(c0, _SPLIT_DOMAIN))
    return torch.stack([_to_u32(y0), _to_u32(y1)], dim=-1)


def fold_in(key_: torch.Tensor, data: int | torch.Tensor) -> torch.Tensor:
    """Derive a new key from ``key_`` and an integer (as ``jax.random.fold_in``), e.g. a step count.

    Args:
        key_: a key ``(2,)``.
        data: a Python int in [0, 2**63) or a non-negative 0-d integer tensor (may be batched by vmap).

    Returns:
        a new key ``(2,)``: Threefry of the counter (data & 0xFFFFFFFF, data >> 32).
    """
    check_key(key_)
    if isinstance(data, torch.Tensor):
        if data.dtype.is_floating_point or data.dtype == torch.bool or data.dim() != 0:
            raise ValueError(f"data must be a 0-d integer tensor, got {data.dtype} of shape {tuple(data.shape)}")
        if _host_words(key_, data):
            return _fold_in_words(key_, int(data))
        d = data.to(device=key_.device, dtype=torch.int64)
        lo, hi = d & _MASK32, (d >> 32) & _MASK32
        counter = torch.stack([lo, hi])
    else:
        if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data < 2**63:
            raise ValueError(f"data must be an int in [0, 2**63) or an integer tensor, got {data!r}")
        if _host_words(key_):
            return _fold_in_words(key_, data)
        counter = torch.tensor([data & _MASK32, data >> 32], dtype=torch.int64, device=key_.device)
    return threefry2x32(key_, counter)


def _fold_in_words(key_: torch.Tensor, data: int) -> torch.Tensor:
    k0, k1 = (w & _MASK32 for w in key_.tolist())
    return torch.tensor(_threefry_words(k0, k1, data & _MASK32, (data >> 32) & _MASK32), dtype=torch.int64)


def _numel(shape: Sequence[int]) -> int:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    # torch.SymInt: a size traced symbolically by torch.compile(dynamic=True) (a compiled hard-concrete gate).
    if any((not isinstance(s, (int, torch.SymInt))) or s < 0 for s in shape):
        raise ValueError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    return math.prod(shape)


def _check_entries(entries, n: int) -> tuple[int, int]:
    """``entries`` as (start, stop) with 0 <= start <= stop <= n (None: every entry)."""
    if entries is None:
        return 0, n
    ok = isinstance(entries, (tuple, list)) and len(entries) == 2
    if not ok or any(isinstance(e, bool) or not isinstance(e, int) for e in entries) or not 0 <= entries[0] <= entries[1] <= n:
        raise ValueError(f"entries must be a pair of ints (start, stop) with 0 <= start <= stop <= {n}, got {entries!r}")
    return int(entries[0]), int(entries[1])


def _out_shape(shape, entries, start: int, stop: int) -> tuple[int, ...]:
    if entries is not None:
        return (stop - start,)
    return (shape,) if isinstance(shape, int) else tuple(shape)


def bits(key_: torch.Tensor, shape: Sequence[int], *, entries: tuple[int, int] | None = None) -> torch.Tensor:
    """Uniform random 32-bit words as int64 values in [0, 2**32), shaped ``shape``.

    With ``entries=(start, stop)``: only flat entries ``start .. stop - 1`` of that draw, 1-D.
    """
    check_key(key_)
    start, stop = _check_entries(entries, _numel(shape))
    return _to_u32(_words_i32(key_, stop - start, start)).reshape(_out_shape(shape, entries, start, stop))


def _unit_interval(key_: torch.Tensor, n: int, dtype: torch.dtype, *, open_low: bool,
                   start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Entries ``start .. stop - 1`` of ``n`` floats on the grid {j / 2**p}, p = the dtype's
    precision, so the cast is exact. Entry i reads word i (float64: words i and n + i)."""
    stop = n if stop is None else stop
    if dtype == torch.float64:
        a = (_words_i32(key_, stop - start, start) >> 5) & ((1 << 27) - 1)
        b = (_words_i32(key_, stop - start, n + start) >> 6) & ((1 << 26) - 1)
        ints = a.to(torch.float64) * float(2**26) + b.to(torch.float64)
        p = 53
        work = torch.float64
    else:
        p = 1 - int(math.log2(torch.finfo(dtype).eps))  # significand bits
        ints = ((_words_i32(key_, stop - start, start) >> (32 - p)) & ((1 << p) - 1)).to(torch.float32)
        work = torch.float32
    if open_low:
        ints = ints + 0.5  # midpoints: strictly inside (0, 1), as inverse-CDF sampling needs
    return (ints * (2.0**-p)).to(work)


def _float_draw(key_: torch.Tensor, shape, dtype, device, entries):
    """Checked (key on its output device, entry count, (start, stop), output shape) of a floating draw."""
    check_key(key_)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if device is not None:
        key_ = key_.to(device)
    n = _numel(shape)
    start, stop = _check_entries(entries, n)
    return key_, n, (start, stop), _out_shape(shape, entries, start, stop)


def uniform(
    key_: torch.Tensor,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    minval: float = 0.0,
    maxval: float = 1.0,
    entries: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Uniform floats in [minval, maxval) drawn from ``key_`` (as ``jax.random.uniform``).

    Args:
        key_: a key ``(2,)``; the draw happens on its device unless ``device`` is given.
        shape: output shape.
        dtype: a floating dtype; the numbers carry that dtype's full precision.
        device: output device (default: the key's device).
        minval, maxval: the interval.
        entries: ``(start, stop)``: draw only these flat entries of the full draw (a shard's).

    Returns:
        tensor of ``shape`` and ``dtype`` (with ``entries``: 1-D, ``stop - start`` entries).
    """
    key_, n, (start, stop), out_shape = _float_draw(key_, shape, dtype, device, entries)
    u = _unit_interval(key_, n, dtype, open_low=False, start=start, stop=stop)
    out = u * (maxval - minval) + minval if (minval, maxval) != (0.0, 1.0) else u
    return out.to(dtype).reshape(out_shape)


def normal(
    key_: torch.Tensor,
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    entries: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Normal floats by inverse-CDF sampling: z = sqrt(2) * erfinv(2u - 1), u in (0, 1).

    ``entries=(start, stop)`` draws only those flat entries, as for :func:`uniform`.
    """
    key_, n, (start, stop), out_shape = _float_draw(key_, shape, dtype, device, entries)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = _unit_interval(key_, n, work, open_low=True, start=start, stop=stop)
    z = torch.erfinv(u * 2.0 - 1.0) * math.sqrt(2.0)
    return (z * std + mean).to(dtype).reshape(out_shape)


def local_entries(t: torch.Tensor) -> tuple[torch.Tensor, int, int] | None:
    """Where a ``DTensor``'s local shard sits in the flat full tensor; None for a plain tensor.

    Returns:
        (flat indices of the local entries in the full tensor, shaped like the local shard;
        start; stop): ``[start, stop)`` is the smallest flat range covering them, which is
        exactly the shard for a ``Shard(0)`` placement (FSDP's). Draw that range with
        ``entries=(start, stop)`` and index it with ``indices - start``.
    """
    if not (hasattr(t, "device_mesh") and hasattr(t, "placements") and hasattr(t, "to_local")):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    flat = torch.zeros((), dtype=torch.int64)
    for d, (size, off) in enumerate(zip(shape, offset)):
        stride = math.prod(t.shape[d + 1:])
        axis = (torch.arange(size, dtype=torch.int64) + off) * stride
        flat = flat.unsqueeze(-1) + axis  # row-major: the shard's box of the full tensor
    if flat.numel() == 0:
        return flat.reshape(shape), 0, 0
    return flat.reshape(shape), int(flat.min()), int(flat.max()) + 1
