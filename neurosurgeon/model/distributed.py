"""Masks on sharded models: FSDP2 (``torch.distributed.fsdp.fully_shard``) and any other
``DTensor`` sharding of the mask parameters.

Outside a forward, FSDP2 holds each parameter as a ``DTensor`` whose local shard is a slice of
dim 0; mask parameters are sharded like the weights, so theta and its optimizer state cost
1/R per rank. Inside a forward the parameters are all-gathered plain tensors, and a mask layer
computes exactly as unsharded. Whatever reads mask tensors outside a forward goes through
:mod:`._sharding` (re-exported here): it gathers them (a collective: every rank must call) or
refuses with the step to take. This file adds the placement rule for ``fully_shard`` and the
baselines split over ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ._sharding import gathered, is_sharded, require_unsharded, shard_like, sharded_mask_layers, writes_files
from .baselines import check_keys, evaluate_baselines

__all__ = ["shard_largest_dim", "is_sharded", "gathered", "shard_like", "sharded_mask_layers", "require_unsharded", "writes_files",
           "evaluate_baselines_split"]


def shard_largest_dim(param: torch.Tensor):
    """A ``shard_placement_fn`` for ``fully_shard``: shard each parameter along its largest dim.

    FSDP2 shards dim 0 by default, but the neuron theta of a ``Conv1D`` is ``(1, out)`` and a
    fused head theta ``(3, heads)``: dim 0 cannot be split over more ranks than its size, and
    the first ranks would hold all of it with its Adam state. Returns None (dim 0) when dim 0
    is already the largest.
    """
    from torch.distributed.tensor import Shard

    if param.dim() == 0:
        return None
    dim = max(range(param.dim()), key=lambda d: (param.shape[d], -d))
    return Shard(dim) if dim else None


def evaluate_baselines_split(model: nn.Module, fn: Callable[[Callable[..., Any]], Any], keys: torch.Tensor, *,
                             group=None, **options: Any) -> Any:
    """:func:`~neurosurgeon.evaluate_baselines` over the ranks of a process group: K keys over R
    ranks cost about K / R evaluations each, and every rank returns what one process would.

    Rank r evaluates the r-th of R contiguous, near-equal slices of ``keys`` on its own
    unsharded copy of the model, and the metrics are all-gathered in key order. Each baseline's
    masks come from its key alone, so the split changes nothing but the cost.

    Args:
        model: an unsharded model with mask layers, the same on every rank (e.g. loaded with
            :func:`~neurosurgeon.load_masks` from a file saved by the sharded model).
        fn, keys: as for :func:`~neurosurgeon.evaluate_baselines`.
        group: the process group (default: the world).
        **options: ``ablation`` (required), ``inputs``, ``chunk_size``, as for
            :func:`~neurosurgeon.evaluate_baselines`.

    Returns:
        ``fn``'s result with a leading dimension K on every tensor, on this rank's device.

    Raises:
        ValueError: the mask layers are sharded (gather them first, as the message says).
    """
    import torch.distributed as dist
    import torch.utils._pytree as pytree

    require_unsharded(model, "evaluate_baselines_split")
    check_keys(keys)
    ranks = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank(group) if ranks > 1 else 0
    mine = torch.tensor_split(keys, ranks)[rank]
    # A rank left without keys (K < R) still needs the result's structure: it evaluates one and keeps none.
    local = evaluate_baselines(model, fn, mine if len(mine) else keys[:1], **options)
    if not len(mine):
        local = pytree.tree_map(lambda t: t[:0], local)
    if ranks == 1:
        return local
    leaves, spec = pytree.tree_flatten(local)
    parts: list = [None] * ranks
    dist.all_gather_object(parts, [t.detach().cpu() for t in leaves], group=group)
    device = leaves[0].device if leaves else keys.device
    joined = [torch.cat([p[i] for p in parts]).to(device) for i in range(len(leaves))]
    return pytree.tree_unflatten(joined, spec)
