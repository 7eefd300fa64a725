"""Random subnetworks of a given size: the baselines an ablation is compared against.

Both samplers zero exactly k = sum(h) mask units, chosen uniformly without replacement:
``randomly_sampled`` from all units, ``complement_sampled`` from the units outside the
subnetwork (h = 0).

Algorithm (sequential sampling with rejection, vectorised). The key defines an endless stream of
32-bit words w_0, w_1, ...; draw j proposes unit c_j = floor(w_j * n / 2**32), rejected when it
falls in the biased tail of Lemire's multiply-shift (so every unit is proposed with probability
exactly 1 / n) or is not eligible. The chosen units are the first k *distinct* accepted
proposals: by symmetry a uniformly random k-subset of the eligible units, exactly. Only about
n * ln(m / (m - k)) words are needed (m eligible units), instead of a score and an O(n)
selection for every unit; when k > m / 2 the m - k units to *keep* are drawn instead.

"First k distinct" needs the order of the draws only at the end. A prefix of the stream that
almost surely proposes fewer than k distinct eligible units (its expected count is
k - 8 sqrt(k) - 16) is marked as a set: one byte store per draw into a bool table that starts
True where a unit is not eligible, so taken and ineligible read alike, and order and repeats do
not matter. The rest is read in short windows, where the new units' first occurrences are found
in draw order (a sort of a few thousand entries) until k are taken. Should the prefix overshoot
k after all, its set is discarded and the windows start at draw 0: the result is the same
either way, only slower.

The kernel is a ``torch.library`` custom op: it runs eagerly on concrete values (so it may read
k and the draw counts on the host), is opaque to ``torch.compile`` (a fake implementation gives
the output's shape), and its ``vmap`` rule runs the unbatched kernel once per batch entry, which
is exactly what a Python loop over the same keys gives. Keys that share the eligible set and k
draw their first words a few keys per op (eager torch pays a dispatch per op); each key's row is
the words it would draw alone.
"""

from __future__ import annotations

import math

import torch

from . import random as nr
from ._checks import check_key, concrete_int, transformed

__all__ = ["randomly_sampled_mask", "complement_sampled_mask"]

_MAX_UNITS = 2**31 - 1
_U32 = 2**32


def proposals(key: torch.Tensor, count: int, n: int, start: int = 0) -> torch.Tensor:
    """Unit proposed by each of words start..start+count-1 of the key's stream (int64), or ``n``
    where the word falls in the biased tail of Lemire's multiply-shift (Lemire 2019, "Fast random
    integer generation in an interval"), so every unit is proposed with probability exactly 1 / n;
    a word's proposal does not depend on ``count`` or ``start``."""
    # the words' unsigned values in one widening copy (from int32, it would sign-extend)
    prod = nr._words_i32(key, count, start).view(torch.uint32).to(torch.int64).mul_(n)
    biased = (prod & (_U32 - 1)) < _U32 % n
    return prod.bitwise_right_shift_(32).masked_fill_(biased, n)  # in place: one fresh int64 buffer


def _prefix_draws(n: int, m: int, k: int) -> tuple[int, int]:
    """(D, its expected count): D draws whose distinct eligible proposals fall short of k but for
    a chance below 1e-13. The expected count m (1 - (1 - p)^D), p = floor(2**32 / n) / 2**32 per
    unit and draw, is set to k - (8 sqrt(k) + 16); the count is a sum of negatively associated
    indicators, so Bernstein's bound applies: exp(-t^2 / (2 (k + t / 3))) < 1e-13 for t >= 8 sqrt(k) + 16."""
    target = int(k - 8.0 * math.sqrt(k) - 16)
    if target <= 0:
        return 0, 0
    p = (_U32 // n) / _U32
    return int(math.log1p(-target / m) / math.log1p(-p)), target


def _window(n: int, free: int, need: int) -> int:
    """Draws expected to propose ``need`` new units among ``free`` untaken eligible ones, plus a margin."""
    return int(need * n / free * 1.1) + 64


def _first_draws(n: int, m: int, k: int) -> tuple[int, int]:
    """(the prefix's draws, the draws of the first read) for k of m eligible units: the first read
    takes the prefix and the window expected after it in one call (a short draw costs mostly dispatch)."""
    start, expected = _prefix_draws(n, m, k)
    return start, start + _window(n, m - expected, k - expected)


def _drawn(k: int, m: int) -> tuple[bool, int]:
    """(whether the survivors are drawn, how many units are drawn): always the smaller side."""
    keep_side = k > m - k
    return keep_side, m - k if keep_side else k


def _first_occurrences(units: torch.Tensor) -> torch.Tensor:
    """Bool: entry j is the first occurrence of its value in ``units``."""
    _, inverse = torch.unique(units, return_inverse=True)
    pos = torch.arange(units.numel(), device=units.device)
    first = torch.full((int(inverse.max()) + 1,), units.numel(), device=units.device).scatter_reduce_(0, inverse, pos, "amin")
    return first.index_select(0, inverse) == pos


#: Bytes per group of the byte-lane count: 255 int64 words, so that no lane sums past 255.
_LANE_GROUP = 255 * 8


def _count_true(flags: torch.Tensor) -> int | torch.Tensor:
    """The True entries of a bool tensor, exactly: an int where it can be read on the host
    without breaking a transform, else a 0-d tensor.

    A contiguous tensor is counted by its bytes, summed eight at a time as int64 words, 255 words
    per group so that no byte lane carries into the next, then the lanes summed: about 4x faster
    than ``torch.count_nonzero`` on CPU, which tests one byte at a time."""
    if transformed(flags):
        return torch.count_nonzero(flags)
    flat = flags.reshape(-1)
    if not flat.is_contiguous() or flat.storage_offset() % 8:  # not viewable as int64 words
        return int(torch.count_nonzero(flat))
    whole = flat.numel() // _LANE_GROUP * _LANE_GROUP
    lanes = flat[:whole].view(torch.int64).view(-1, 255).sum(1)
    return int(lanes.view(torch.uint8).sum(dtype=torch.int64)) + int(torch.count_nonzero(flat[whole:]))


def _take_first_distinct(key: torch.Tensor, taken: torch.Tensor, eligible: torch.Tensor, m: int, k: int,
                         first: torch.Tensor | None = None) -> None:
    """Set ``taken`` True at the first k distinct eligible units the key's stream proposes.

    ``taken``: ``_barred(eligible)``: bool, n + 1 entries, True exactly where a unit is not
    eligible and at the spare entry n (where rejected draws land); ``m`` eligible units.
    ``first``: the proposals of the first :func:`_first_draws` draws, if already made."""
    if k == 0:
        return
    n = taken.numel() - 1
    start, draws = _first_draws(n, m, k)
    window = proposals(key, draws, n) if first is None else first
    if start:
        taken.index_fill_(0, window[:start], True)
        got = _count_true(taken) - (n + 1 - m)
        if got > k:  # below 1e-13: the prefix overshot; read everything in draw order from draw 0
            torch.logical_not(eligible, out=taken[:n])  # back to the barred table
            start = got = 0
        k, free, window = k - got, m - got, window[start:]
    else:
        free = m
    while k > 0:
        # in draw order; rejected draws hit the spare entry (masked_select: ~2x a short boolean index)
        new = torch.masked_select(window, taken.index_select(0, window).logical_not_())
        chosen = torch.masked_select(new, _first_occurrences(new))[:k] if new.numel() else new
        taken.index_fill_(0, chosen, True)
        k, free, start = k - chosen.numel(), free - chosen.numel(), start + window.numel()
        if k > 0:
            window = proposals(key, _window(n, free, k), n, start)


def _kept(key: torch.Tensor, eligible: torch.Tensor, k: int, m: int, first=None) -> torch.Tensor:
    """Bool mask (n + 1 entries, the last spare), True where a unit is kept, for k zeros drawn
    among the m eligible units of the flat ``eligible`` (``first``: see :func:`_take_first_distinct`)."""
    n = eligible.numel()
    if k > m:
        raise ValueError(f"cannot choose {k} mask units from only {m} eligible ones")
    taken = _barred(eligible)
    keep_side, drawn = _drawn(k, m)
    _take_first_distinct(key, taken, eligible, m, drawn, first)
    # taken = ineligible | drawn. Drawn survivors: kept = taken. Drawn zeros: kept = taken xor eligible
    # (ineligible units stay, drawn ones go, the rest stay).
    return taken if keep_side else taken[:n].bitwise_xor_(eligible)


def _barred(eligible: torch.Tensor) -> torch.Tensor:
    """~eligible and a True spare entry: one pass, so each key builds its own."""
    barred = torch.empty(eligible.numel() + 1, dtype=torch.bool, device=eligible.device)
    torch.logical_not(eligible, out=barred[:-1])
    barred[-1:].fill_(True)
    return barred


def _zeros_kernel(key: torch.Tensor, eligible: torch.Tensor, k: int, m: int, out: torch.Tensor, first=None) -> torch.Tensor:
    """Write the bool zero-set (True = zeroed) into ``out`` (eligible's shape); m eligible units."""
    n = eligible.numel()
    torch.logical_not(_kept(key, eligible.reshape(-1), k, m, first)[:n], out=out.view(-1))
    return out


def _mask_kernel(key: torch.Tensor, eligible: torch.Tensor, k: int, m: int, out: torch.Tensor, first=None) -> torch.Tensor:
    """Write the sampled *mask* (1 = kept, 0 = zeroed) into ``out`` (floating, eligible's shape);
    a cast from bytes is the cheapest pass from a bool mask to a float one."""
    n = eligible.numel()
    out.view(-1).copy_(_kept(key, eligible.reshape(-1), k, m, first)[:n].view(torch.uint8))
    return out


#: Keys whose first draws share one set of ops when they share an eligible set and a count: eager
#: torch pays a dispatch per op, and beyond a few keys the words outgrow the cache.
_KEYS_PER_DRAW = 4


def _shared_first_draws(keys: torch.Tensor, eligible: torch.Tensor, num_zeros, num_eligible):
    """Yield each key's first proposals, drawn for ``_KEYS_PER_DRAW`` keys at a time (each row
    is what that key alone would draw), or None where the kernel draws nothing or raises."""
    n, k, m = eligible.numel(), int(num_zeros), int(num_eligible)
    side = _drawn(k, m)[1]
    draws = _first_draws(n, m, side)[1] if 0 < side and k <= m else 0
    for lo in range(0, keys.shape[0], _KEYS_PER_DRAW):
        group = proposals(keys[lo: lo + _KEYS_PER_DRAW], draws, n) if draws else [None] * _KEYS_PER_DRAW
        yield from group[: keys.shape[0] - lo]


def _batched(kernel, op, info, in_dims, key, eligible, num_zeros, num_eligible, dtype):
    # One unbatched kernel call per entry, written into its slice of one preallocated output:
    # vmap == loop by construction, and each call touches a cache-sized working set (batched
    # scatter/kthvalue over (K, n) are far slower on CPU, and stacking K outputs costs a copy).
    args = (key, eligible, num_zeros, num_eligible)
    slices = [tuple(a if d is None else a.select(d, i) for a, d in zip(args, in_dims)) for i in range(info.batch_size)]
    if transformed(*args):
        # traced by torch.compile, or nested vmap: one (opaque) op call per entry
        extra = () if op is _sample_zeros_op else (dtype,)
        return torch.stack([op(*sl, *extra) for sl in slices]), 0
    out = torch.empty((info.batch_size, *slices[0][1].shape), dtype=dtype, device=eligible.device)
    shared = in_dims[0] is not None and all(d is None for d in in_dims[1:])  # one eligible set and count
    firsts = _shared_first_draws(key.movedim(in_dims[0], 0), eligible, num_zeros, num_eligible) if shared else None
    for i, (k_i, e_i, n_i, m_i) in enumerate(slices):
        kernel(k_i, e_i, int(n_i), int(m_i), out[i], next(firsts) if shared else None)
    return out, 0


@torch.library.custom_op("neurosurgeon::sample_zeros", mutates_args=())
def _sample_zeros_op(key: torch.Tensor, eligible: torch.Tensor, num_zeros: torch.Tensor,
                     num_eligible: torch.Tensor) -> torch.Tensor:
    return _zeros_kernel(key, eligible, int(num_zeros), int(num_eligible), torch.empty_like(eligible))


@_sample_zeros_op.register_fake
def _(key, eligible, num_zeros, num_eligible):
    return torch.empty_like(eligible, dtype=torch.bool)


torch.library.register_vmap(
    _sample_zeros_op,
    lambda info, in_dims, key, eligible, num_zeros, num_eligible: _batched(
        _zeros_kernel, _sample_zeros_op, info, in_dims, key, eligible, num_zeros, num_eligible, torch.bool),
)


@torch.library.custom_op("neurosurgeon::sampled_mask", mutates_args=())
def _sampled_mask_op(key: torch.Tensor, eligible: torch.Tensor, num_zeros: torch.Tensor, num_eligible: torch.Tensor,
                     dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(eligible.shape, dtype=dtype, device=eligible.device)
    return _mask_kernel(key, eligible, int(num_zeros), int(num_eligible), out)


@_sampled_mask_op.register_fake
def _(key, eligible, num_zeros, num_eligible, dtype):
    return torch.empty(eligible.shape, dtype=dtype, device=eligible.device)


torch.library.register_vmap(
    _sampled_mask_op,
    lambda info, in_dims, key, eligible, num_zeros, num_eligible, dtype: _batched(
        _mask_kernel, _sampled_mask_op, info, in_dims, key, eligible, num_zeros, num_eligible, dtype),
)


def _count_int(count: int | torch.Tensor) -> int:
    return int(_count_tensor(count))


def _count_tensor(num_zeros: int | torch.Tensor) -> torch.Tensor:
    if isinstance(num_zeros, int):
        if num_zeros < 0:
            raise ValueError(f"num_zeros must be >= 0, got {num_zeros}")
        return torch.tensor(num_zeros, dtype=torch.int64)
    return num_zeros.to(torch.int64)


def _sampled_mask(key: torch.Tensor, eligible: torch.Tensor, num_zeros, num_eligible, dtype: torch.dtype) -> torch.Tensor:
    """Ones except ``num_zeros`` units drawn from the ``num_eligible`` units of ``eligible``:
    ``(~sample_zeros(...)).to(dtype)``, fused."""
    check_key(key)
    if eligible.numel() > _MAX_UNITS:
        raise ValueError(f"cannot sample over {eligible.numel()} mask units (at most {_MAX_UNITS})")
    if not transformed(key, eligible, *(t for t in (num_zeros, num_eligible) if isinstance(t, torch.Tensor))):
        # Eager: the kernel itself. Calling the op would run torch's dispatcher wrapper, whose
        # first call imports the compiler, a cold start the user never asked for.
        out = torch.empty(eligible.shape, dtype=dtype, device=eligible.device)
        return _mask_kernel(key, eligible, _count_int(num_zeros), _count_int(num_eligible), out)
    return _sampled_mask_op(key, eligible, _count_tensor(num_zeros), _count_tensor(num_eligible), dtype)


def sample_zeros(key: torch.Tensor, eligible: torch.Tensor, num_zeros: int | torch.Tensor) -> torch.Tensor:
    """Boolean tensor (eligible's shape) with ``num_zeros`` True entries drawn uniformly from ``eligible``.

    Args:
        key: PRNG key ``(2,)``; vmap over ``(K, 2)`` keys for K draws.
        eligible: bool tensor; only its True entries can be chosen.
        num_zeros: k, a Python int or a 0-d integer tensor (e.g. computed inside a
            ``torch.compile`` graph or batched by vmap); the result is the same either way.
            k must not exceed the number of eligible entries.

    Example:
        >>> z = sample_zeros(nr.key(0), torch.ones(10, dtype=torch.bool), 3)
        >>> int(z.sum())
        3
    """
    check_key(key)
    n = eligible.numel()
    if n > _MAX_UNITS:
        raise ValueError(f"cannot sample over {n} mask units (at most {_MAX_UNITS})")
    if eligible.dtype != torch.bool:
        raise TypeError(f"eligible must be a bool tensor, got {eligible.dtype}")
    num_eligible = _count_true(eligible)
    if not transformed(key, eligible, *(t for t in (num_zeros, num_eligible) if isinstance(t, torch.Tensor))):
        return _zeros_kernel(key, eligible, _count_int(num_zeros), _count_int(num_eligible), torch.empty_like(eligible))
    return _sample_zeros_op(key, eligible, _count_tensor(num_zeros), _count_tensor(num_eligible))


def _concrete_or_tensor(t: int | torch.Tensor) -> int | torch.Tensor:
    if isinstance(t, int):
        return t
    k = concrete_int(t)
    return k if k is not None else t


def _outside(hard_mask: torch.Tensor) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(h == 0 as a bool tensor, its count): one bool pass (a float compare is about 3x slower),
    counted exactly (a bf16 sum is inexact above 256) by :func:`_count_true`."""
    outside = torch.logical_not(hard_mask)
    return outside, _count_true(outside)


def _checked_count(hard_mask: torch.Tensor, num_zeros, available: int | torch.Tensor, what: str):
    """k = sum(h) as an int when it can be read without breaking a transform, else as a tensor."""
    if num_zeros is None:
        num_zeros = _concrete_or_tensor(hard_mask.numel() - _outside(hard_mask)[1])
    elif isinstance(num_zeros, torch.Tensor):
        pass
    elif isinstance(num_zeros, bool) or not isinstance(num_zeros, int) or num_zeros < 0:
        raise ValueError(f"num_zeros must be a non-negative int or None, got {num_zeros!r}")
    avail = available if isinstance(available, int) else concrete_int(available)
    k = num_zeros if isinstance(num_zeros, int) else None
    if k is not None and avail is not None and k > avail:
        raise ValueError(
            f"{what}: the subnetwork keeps {k} mask units but only {avail} lie outside it; cannot draw {k} units "
            "from the complement. It must keep at most half of the units (a sparser subnetwork), or use "
            "randomly_sampled, which draws from all units"
        )
    return num_zeros


def randomly_sampled_mask(key: torch.Tensor, hard_mask: torch.Tensor, *, num_zeros: int | None = None) -> torch.Tensor:
    """``randomly_sampled`` ablation: ones except k = sum(h) units drawn uniformly from all units.

    Args:
        key: PRNG key ``(2,)``; vmap over ``(K, 2)`` keys for K baselines.
        hard_mask: h, binary, the subnetwork at mask-unit shape.
        num_zeros: k if already known (skips a host read); default sum(h).

    Returns:
        binary mask of h's shape and dtype.
    """
    if hasattr(hard_mask, "full_tensor"):
        return _drawn_whole(randomly_sampled_mask, key, hard_mask, num_zeros)
    eligible = torch.ones_like(hard_mask, dtype=torch.bool)
    k = _checked_count(hard_mask, num_zeros, hard_mask.numel(), "randomly_sampled")
    return _sampled_mask(key, eligible, k, hard_mask.numel(), hard_mask.dtype)


def complement_sampled_mask(key: torch.Tensor, hard_mask: torch.Tensor, *, num_zeros: int | None = None) -> torch.Tensor:
    """``complement_sampled`` ablation: ones except k = sum(h) units drawn from where h = 0.

    Raises:
        ValueError: if k exceeds the number of units outside the subnetwork (both counts named).
    """
    if hasattr(hard_mask, "full_tensor"):
        return _drawn_whole(complement_sampled_mask, key, hard_mask, num_zeros)
    outside, available = _outside(hard_mask)
    if num_zeros is None:  # k = sum(h) = #(h != 0), counted once
        num_zeros = _concrete_or_tensor(hard_mask.numel() - available)
    what = f"complement_sampled over a mask of shape {tuple(hard_mask.shape)}"
    k = _checked_count(hard_mask, num_zeros, available, what)
    return _sampled_mask(key, outside, k, available, hard_mask.dtype)


def _drawn_whole(sampler, key: torch.Tensor, hard_mask: torch.Tensor, num_zeros) -> torch.Tensor:
    """A sampled ablation of a sharded h (a ``DTensor``): gathered, drawn as unsharded, and this
    rank's shard kept. Exactly k units are drawn over the *whole* tensor, so which units one
    shard zeroes depends on every other shard's h: no shard can draw its part alone. The result
    is the unsharded draw for any sharding."""
    from torch.distributed.tensor import distribute_tensor

    whole = sampler(key, hard_mask.full_tensor(), num_zeros=num_zeros)
    return distribute_tensor(whole, hard_mask.device_mesh, hard_mask.placements, src_data_rank=None)
