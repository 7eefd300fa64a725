"""Reading mask tensors of a sharded model: FSDP2 (``torch.distributed.fsdp.fully_shard``) and
any other ``DTensor`` sharding of the mask parameters.

Outside a forward, FSDP2 holds each parameter as a ``DTensor`` whose local shard is a slice of
dim 0; mask parameters are sharded like the weights, so theta and its optimizer state cost
1/R per rank. Inside a forward the parameters are all-gathered plain tensors, and a mask layer
computes exactly as unsharded. Whatever reads mask tensors outside a forward goes through this
file: it gathers them (a collective: every rank must call) or refuses with the step to take.
The model-level modules import it; :mod:`.distributed` re-exports it with the multi-rank
baselines, which sit above :mod:`.baselines` and so cannot live here.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ._layers import require_mask_layers

__all__ = ["is_sharded", "gathered", "shard_like", "sharded_mask_layers", "require_unsharded", "writes_files"]


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
