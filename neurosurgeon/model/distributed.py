"""Masks on sharded models: FSDP2 (``torch.distributed.fsdp.fully_shard``) and any other
``DTensor`` sharding of the mask parameters.

Outside a forward, FSDP2 holds each parameter as a ``DTensor`` whose local shard is a slice of
dim 0; mask parameters are sharded like the weights, so theta and its optimizer state cost
1/R per rank. Inside a forward the parameters are all-gathered plain tensors, and a mask layer
computes exactly as unsharded. Whatever reads mask tensors outside a forward goes through this
file: it gathers them (a collective: every rank must call) or refuses with the step to take.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ._layers import require_mask_layers

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


def is_sharded(t) -> bool:
    """Whether ``t`` is a ``DTensor`` (sharded or replicated over a device mesh)."""
    return isinstance(t, torch.Tensor) and hasattr(t, "device_mesh") and hasattr(t, "full_tensor")


def gathered(t: torch.Tensor | None) -> torch.Tensor | None:
    """The full tensor of a ``DTensor`` (all-gathered: every rank of its mesh must call), else ``t``."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """This rank's part of the full tensor ``value``, placed as ``target`` (no communication:
    every rank holds ``value``); ``value`` itself when ``target`` is not a ``DTensor``."""
    if not is_sharded(target):
        return value
    from torch.distributed.tensor import distribute_tensor

    local = value.to(device=target.to_local().device, dtype=target.dtype)
    return distribute_tensor(local, target.device_mesh, target.placements, src_data_rank=None)


def sharded_mask_layers(model: nn.Module) -> list[str]:
    """Names of the mask layers whose mask parameters (or, for magnitude pruning, weight) are
    ``DTensor`` s: none or all of them.

    Raises:
        ValueError: some are sharded and some are not (``fully_shard`` left out a part of the
            model, typically the root, whose masks would then train apart on every rank).
    """
    layers = require_mask_layers(model)
    names = [name or "<root>" for name, layer in layers.items()
             if any(is_sharded(t) for t in (*layer.mask_tensors(), layer.weight))]
    if names and len(names) != len(layers):
        plain = [name or "<root>" for name in layers if (name or "<root>") not in names]
        raise ValueError(f"{len(names)} mask layers are sharded (e.g. {names[0]!r}) but {len(plain)} are not "
                         f"(e.g. {plain[0]!r}): apply fully_shard to the model's root as well, after its blocks")
    return names


def require_unsharded(model: nn.Module, what: str, hint: str = "") -> None:
    """Raise ValueError naming ``what`` and the step to take when ``model``'s masks are sharded."""
    sharded = sharded_mask_layers(model)
    if sharded:
        raise ValueError(
            f"{what} needs the mask layers unsharded, but {len(sharded)} are sharded (DTensor), e.g. {sharded[0]!r}. "
            "Gather first: ns.save_masks(sharded_model, path) on every rank, then ns.load_masks(model, path) into an "
            f"unsharded copy of the model (same inject_masks call), and run {what} there{hint}")


def writes_files() -> bool:
    """True on the process that writes shared files: rank 0, or the only process."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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

    from .baselines import check_keys, evaluate_baselines

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
