"""``cached_masks()``: reuse each layer's masked weight inside one block, the way
``torch.nn.utils.parametrize.cached()`` does.

Outside the block every forward recomputes its masks, so nothing can be stale. Inside it, a
mask layer computes its effective weight and bias once (per mode and settings) and reuses
them until the outermost block exits, which forgets everything. Editing parameters inside the
block is the caller's contract, as with ``parametrize.cached()``. Only results without an
autograd graph are kept (evaluation under ``no_grad``, or a frozen base): reusing a graph would
fail at the second backward.

``soft_masks_for_l0()`` is the training-side scope, one per step: where a strategy's soft L0 is
the sum of its soft mask (continuous sparsification: sum sigma(beta * theta)), the L0 term of the
step reuses the mask its forward computed, so theta goes through one sigmoid per step, not two.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cached_masks", "soft_masks_for_l0"]

_state: dict[str, Any] = {"depth": 0, "entries": {}}
_soft: dict[str, Any] = {"depth": 0, "entries": {}}  # soft_masks_for_l0(): nesting depth, layer -> masks


def cache_lookup(layer, settings) -> Any:
    """The entry ``layer`` stored under ``settings`` in the open block, or None."""
    if not _state["depth"]:
        return None
    entry = _state["entries"].get(id(layer))
    return entry[2] if entry is not None and entry[0] is layer and entry[1] == settings else None


def cache_store(layer, settings, value) -> None:
    """Keep ``value`` for ``layer`` under ``settings`` until the outermost block exits."""
    if _state["depth"]:
        _state["entries"][id(layer)] = (layer, settings, value)


class cached_masks:
    """Context manager: each mask layer computes its masked weight once per block. Re-entrant.

    Example:
        >>> import torch, neurosurgeon as ns
        >>> layer = ns.ContSparseLinear(4, 3, key=0).eval()
        >>> with torch.no_grad(), ns.cached_masks():
        ...     w1 = layer.masked_parameters().weight
        ...     w2 = layer.masked_parameters().weight
        >>> w1 is w2
        True
    """

    def __enter__(self):
        _state["depth"] += 1
        return self

    def __exit__(self, *exc):
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _state["entries"].clear()
        return False


class soft_masks_for_l0:
    """Context manager around one training step's forward and its L0 term: inside it, each mask
    layer's soft L0 reuses the soft mask of its last forward in the block (same theta, same
    hyper-parameters), else computes it. Open one per step, forward first: the block ends
    before the optimizer changes theta, so a mask never outlives the theta it came from.
    Re-entrant: a nested block (:class:`~neurosurgeon.CircuitModel` opens one in its training
    forward) shares the outermost one's masks, which are forgotten when it exits.

    Example:
        >>> import torch, torch.nn as nn, neurosurgeon as ns
        >>> net = nn.Sequential(nn.Linear(4, 3)); _ = ns.inject_masks(net, "0", key=0)
        >>> with ns.soft_masks_for_l0():
        ...     loss = net(torch.ones(2, 4)).sum() + 1e-3 * ns.l0_penalty(net)
        >>> loss.backward()
    """

    def __enter__(self):
        _soft["depth"] += 1
        return self

    def __exit__(self, *exc):
        _soft["depth"] -= 1
        if _soft["depth"] == 0:
            _soft["entries"].clear()
        return False


def soft_store(layer, thetas, settings, masks) -> None:
    """Keep the unit masks a training forward of ``layer`` made from ``thetas`` in the open block."""
    if _soft["depth"]:
        _soft["entries"][id(layer)] = (layer, thetas, settings, masks)


def soft_lookup(layer, thetas, settings):
    """The unit masks ``layer`` made from these very ``thetas`` in the open block, or None."""
    entry = _soft["entries"].get(id(layer)) if _soft["depth"] else None
    if entry is None or entry[0] is not layer or entry[2] != settings:
        return None
    return entry[3] if all(a is b for a, b in zip(entry[1], thetas)) else None
