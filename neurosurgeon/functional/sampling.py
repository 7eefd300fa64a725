"""Random subnetworks of a given size: the baselines an ablation is compared against.

Both samplers zero exactly k = sum(h) mask units, chosen uniformly without replacement:
``randomly_sampled`` from all units, ``complement_sampled`` from the units outside the
subnetwork (h = 0).

Algorithm (sequential sampling with rejection, vectorised). The key defines an endless stream of
32-bit words w_0, w_1, ...; draw j proposes unit c_j = floor(w_j * n / 2**32), rejected when it
falls in the biased tail of Lemire's multiply-shift (so every unit is proposed with probability
exactly 1 / n) or is not eligible. The chosen units are the first k *distinct* accepted
proposals: by symmetry a uniformly random k-subset of the eligible units, exactly. Only about
n * ln(m / (m - k)) words are needed (m eligible units), instead of a 63-bit score and an O(n)
selection for every unit; when k > m / 2 the m - k units to *keep* are drawn instead. The
draw count is only an estimate: if it falls short, more of the same stream is read, so the
result never depends on it. Distinctness and eligibility are one lookup per draw: an int32 stamp
per unit records the first draw that proposed it (a scatter-max of decreasing stamps), or a value
above every stamp for a unit that is not eligible.

The kernel is a ``torch.library`` custom op: it runs eagerly on concrete values (so it may read
k and the draw counts on the host), is opaque to ``torch.compile`` (a fake implementation gives
the output's shape), and its ``vmap`` rule runs the unbatched kernel once per batch entry, which
is exactly what a Python loop over the same keys gives.
"""

from __future__ import annotations

import math

import torch

from . import random as nr
from ._checks import check_key, concrete_int, transformed

__all__ = ["randomly_sampled_mask", "complement_sampled_mask"]

_MAX_UNITS = 2**31 - 1
_U32 = 2**32


def _draw_estimate(n: int, m: int, k: int) -> int:
    """Words expected to yield k distinct eligible units (sum of geometric waits), plus a margin."""
    accept = 1.0 - (_U32 % n) / _U32
    mean = n / accept * math.log((m + 0.5) / (m - k + 0.5))
    return int(mean * 1.03) + 64


def proposals(key: torch.Tensor, count: int, n: int) -> torch.Tensor:
    """Unit proposed by each of words 0..count-1 of the key's stream (int64), or ``n`` where the
    word falls in the biased tail of Lemire's multiply-shift (Lemire 2019, "Fast random integer
    generation in an interval"), so every unit is proposed with probability exactly 1 / n; every
    prefix is independent of ``count``."""
    w = nr._words_i32(key, count).to(torch.int64) & (_U32 - 1)
    prod = w * n
    ok = (prod & (_U32 - 1)) >= _U32 % n
    return torch.where(ok, prod >> 32, torch.full((), n, dtype=torch.int64, device=w.device))


_BARRED = 2**31 - 1  # stamp of a unit that is not eligible: above every draw's stamp, so never replaced


class _Stamps:
    """Scratch for :func:`_first_distinct`: one int32 stamp per unit, barred where the unit is not
    eligible, so one lookup per draw answers both "eligible?" and "first?". Draw j of an attempt
    stamps ``base + (draws - 1 - j)``: an earlier draw has a larger stamp (scatter-max keeps the
    first), and every attempt starts above all earlier stamps, so stamps left by earlier keys
    read as unseen and several keys share one table without resetting it."""

    def __init__(self, flat: torch.Tensor, m: int, out: torch.Tensor | None = None):
        self.flat, self.m = flat, m
        self.table = torch.empty(flat.shape, dtype=torch.int32, device=flat.device) if out is None else out
        self._fill()

    def _fill(self) -> None:
        self.base = 1  # 0 is below every stamp: unseen
        if self.m == self.flat.numel():
            self.table.zero_()
        else:  # one pass: 0 where eligible, barred elsewhere
            scalar = dict(dtype=torch.int32, device=self.table.device)
            torch.where(self.flat, torch.zeros((), **scalar), torch.full((), _BARRED, **scalar), out=self.table)

    def claim(self, draws: int) -> int:
        """The base of an attempt of ``draws`` draws; refills the table before stamps would reach barred."""
        if self.base + draws >= _BARRED:
            self._fill()
        base, self.base = self.base, self.base + draws
        return base


def _first_distinct(key: torch.Tensor, n: int, m: int, k: int, stamps: _Stamps) -> torch.Tensor:
    """Indices (int64, in draw order) of the first k distinct eligible units the key's stream proposes."""
    device = key.device
    draws = _draw_estimate(n, m, k)
    while True:
        slot = proposals(key, draws, n)  # n: the word fell in the rejected tail
        ok = slot < n
        unit = slot.clamp_(max=n - 1)
        base = stamps.claim(draws)
        stamp = torch.arange(base + draws - 1, base - 1, -1, dtype=torch.int32, device=device)
        # Rejected draws stamp 0, which changes no entry under max; barred entries stay barred.
        stamps.table.scatter_reduce_(0, unit, torch.where(ok, stamp, 0), "amax")
        is_first = ok & (stamps.table.index_select(0, unit) == stamp)
        chosen = unit[is_first]  # boolean indexing keeps draw order
        if chosen.numel() >= k:
            return chosen[:k]
        draws *= 2  # rare: the estimate fell short; the stream's prefix is unchanged


def _choose(key: torch.Tensor, flat: torch.Tensor, k: int, shared=None, scratch=None):
    """(chosen units, keep_side) for k zeros among the eligible units of ``flat``; None if trivial.

    ``shared``: ``(m, stamps)`` made once for several keys over the same ``flat``.
    ``scratch``: n int32 entries the caller overwrites afterwards, used as the stamp table when
    nothing is shared: no fresh n-sized buffer per call."""
    n = flat.numel()
    m, stamps = shared if shared is not None else (int(torch.count_nonzero(flat)), None)
    if k > m:
        raise ValueError(f"cannot choose {k} mask units from only {m} eligible ones")
    if k == 0 or k == m:
        return None, k == m
    if stamps is None:
        stamps = _Stamps(flat, m, scratch)
    keep_side = k > m - k  # draw the smaller side: the m - k survivors
    return _first_distinct(key, n, m, m - k if keep_side else k, stamps), keep_side


def _zeros_kernel(key: torch.Tensor, eligible: torch.Tensor, k: int, out: torch.Tensor, shared=None) -> torch.Tensor:
    """Write the bool zero-set (True = zeroed) into ``out`` (eligible's shape)."""
    flat, dst = eligible.reshape(-1), out.view(-1)
    chosen, keep_side = _choose(key, flat, k, shared)
    if chosen is None:
        dst.copy_(flat) if keep_side else dst.zero_()
    else:
        dst.zero_().index_fill_(0, chosen, True)
        if keep_side:
            dst.logical_not_().logical_and_(flat)
    return out


def _mask_kernel(key: torch.Tensor, eligible: torch.Tensor, k: int, out: torch.Tensor, shared=None) -> torch.Tensor:
    """Write the sampled *mask* (1 = kept, 0 = zeroed) into ``out`` (floating, eligible's shape)
    directly: one pass over n plus k scattered writes, instead of bool set, not, cast."""
    flat, dst = eligible.reshape(-1), out.view(-1)
    # A mask of 4 or 8 bytes an entry holds n int32 entries: the draw's scratch before it is written.
    scratch = dst.view(torch.int32)[: dst.numel()] if dst.element_size() >= 4 else None
    chosen, keep_side = _choose(key, flat, k, shared, scratch)
    if chosen is None:
        torch.logical_not(flat, out=dst) if keep_side else dst.fill_(1)
    elif keep_side:  # zero every eligible unit, then restore the chosen survivors
        torch.logical_not(flat, out=dst).index_fill_(0, chosen, 1)
    else:
        dst.fill_(1).index_fill_(0, chosen, 0)
    return out


def _batched(kernel, op, info, in_dims, key, eligible, num_zeros, dtype):
    # One unbatched kernel call per entry, written into its slice of one preallocated output:
    # vmap == loop by construction, and each call touches a cache-sized working set (batched
    # scatter/kthvalue over (K, n) are far slower on CPU, and stacking K outputs costs a copy).
    args = (key, eligible, num_zeros)
    slices = [tuple(a if d is None else a.select(d, i) for a, d in zip(args, in_dims)) for i in range(info.batch_size)]
    if transformed(*args):
        # traced by torch.compile, or nested vmap: one (opaque) op call per entry
        extra = () if op is _sample_zeros_op else (dtype,)
        return torch.stack([op(*sl, *extra) for sl in slices]), 0
    out = torch.empty((info.batch_size, *slices[0][1].shape), dtype=dtype, device=eligible.device)
    shared = None
    if in_dims[1] is None:  # one eligible set for every key: count it and allocate scratch once
        flat = eligible.reshape(-1)
        m = int(torch.count_nonzero(flat))
        shared = (m, _Stamps(flat, m))
    for i, (k_i, e_i, n_i) in enumerate(slices):
        kernel(k_i, e_i, int(n_i), out[i], shared)
    return out, 0


@torch.library.custom_op("neurosurgeon::sample_zeros", mutates_args=())
def _sample_zeros_op(key: torch.Tensor, eligible: torch.Tensor, num_zeros: torch.Tensor) -> torch.Tensor:
    return _zeros_kernel(key, eligible, int(num_zeros), torch.empty_like(eligible))


@_sample_zeros_op.register_fake
def _(key, eligible, num_zeros):
    return torch.empty_like(eligible, dtype=torch.bool)


torch.library.register_vmap(
    _sample_zeros_op,
    lambda info, in_dims, key, eligible, num_zeros: _batched(
        _zeros_kernel, _sample_zeros_op, info, in_dims, key, eligible, num_zeros, torch.bool),
)


@torch.library.custom_op("neurosurgeon::sampled_mask", mutates_args=())
def _sampled_mask_op(key: torch.Tensor, eligible: torch.Tensor, num_zeros: torch.Tensor,
                     dtype: torch.dtype) -> torch.Tensor:
    return _mask_kernel(key, eligible, int(num_zeros), torch.empty(eligible.shape, dtype=dtype, device=eligible.device))


@_sampled_mask_op.register_fake
def _(key, eligible, num_zeros, dtype):
    return torch.empty(eligible.shape, dtype=dtype, device=eligible.device)


torch.library.register_vmap(
    _sampled_mask_op,
    lambda info, in_dims, key, eligible, num_zeros, dtype: _batched(
        _mask_kernel, _sampled_mask_op, info, in_dims, key, eligible, num_zeros, dtype),
)


def _count_tensor(num_zeros: int | torch.Tensor) -> torch.Tensor:
    if isinstance(num_zeros, int):
        if num_zeros < 0:
            raise ValueError(f"num_zeros must be >= 0, got {num_zeros}")
        return torch.tensor(num_zeros, dtype=torch.int64)
    return num_zeros.to(torch.int64)


def _sampled_mask(key: torch.Tensor, eligible: torch.Tensor, num_zeros, dtype: torch.dtype) -> torch.Tensor:
    """Ones except ``num_zeros`` units drawn from ``eligible``: ``(~sample_zeros(...)).to(dtype)``, fused."""
    check_key(key)
    if eligible.numel() > _MAX_UNITS:
        raise ValueError(f"cannot sample over {eligible.numel()} mask units (at most {_MAX_UNITS})")
    return _sampled_mask_op(key, eligible, _count_tensor(num_zeros), dtype)


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
    return _sample_zeros_op(key, eligible, _count_tensor(num_zeros))


def _concrete_or_tensor(t: torch.Tensor) -> int | torch.Tensor:
    k = concrete_int(t)
    return k if k is not None else t


def _checked_count(hard_mask: torch.Tensor, num_zeros, available: int | torch.Tensor, what: str):
    """k = sum(h) as an int when it can be read without breaking a transform, else as a tensor."""
    if num_zeros is None:
        # counted in int64 (a bf16 sum is inexact above 256)
        num_zeros = _concrete_or_tensor(torch.count_nonzero(hard_mask))
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
    return _sampled_mask(key, eligible, k, hard_mask.dtype)


def complement_sampled_mask(key: torch.Tensor, hard_mask: torch.Tensor, *, num_zeros: int | None = None) -> torch.Tensor:
    """``complement_sampled`` ablation: ones except k = sum(h) units drawn from where h = 0.

    Raises:
        ValueError: if k exceeds the number of units outside the subnetwork (both counts named).
    """
    if hasattr(hard_mask, "full_tensor"):
        return _drawn_whole(complement_sampled_mask, key, hard_mask, num_zeros)
    outside = hard_mask == 0
    available = torch.count_nonzero(outside)
    if num_zeros is None:  # k = sum(h) = #(h != 0), counted once
        num_zeros = _concrete_or_tensor(hard_mask.numel() - available)
    what = f"complement_sampled over a mask of shape {tuple(hard_mask.shape)}"
    k = _checked_count(hard_mask, num_zeros, available, what)
    return _sampled_mask(key, outside, k, hard_mask.dtype)


def _drawn_whole(sampler, key: torch.Tensor, hard_mask: torch.Tensor, num_zeros) -> torch.Tensor:
    """A sampled ablation of a sharded h (a ``DTensor``): gathered, drawn as unsharded, and this
    rank's shard kept. Exactly k units are drawn over the *whole* tensor, so which units one
    shard zeroes depends on every other shard's h: no shard can draw its part alone. The result
    is the unsharded draw for any sharding."""
    from torch.distributed.tensor import distribute_tensor

    whole = sampler(key, hard_mask.full_tensor(), num_zeros=num_zeros)
    return distribute_tensor(whole, hard_mask.device_mesh, hard_mask.placements, src_data_rank=None)
