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


class _Store:
    """One kind of block's entries, by layer: kept from the outermost block's entry to its exit."""

    def __init__(self):
        self.depth, self.entries = 0, {}

    def put(self, layer, *value) -> None:
        if self.depth:
            self.entries[id(layer)] = (layer, *value)

    def get(self, layer) -> tuple | None:
        """What ``layer`` itself stored in the open block (an id reused by another object misses)."""
        entry = self.entries.get(id(layer)) if self.depth else None
        return entry[1:] if entry is not None and entry[0] is layer else None


class _Block:
    """A re-entrant context manager over its class's ``_store``: nested blocks share the
    outermost one's entries, which are forgotten when it exits."""

    _store: _Store

    def __enter__(self):
        self._store.depth += 1
        return self

    def __exit__(self, *exc):
        self._store.depth -= 1
        if self._store.depth == 0:
            self._store.entries.clear()
        return False


class cached_masks(_Block):
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

    _store = _Store()


class soft_masks_for_l0(_Block):
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

    _store = _Store()


def cache_lookup(layer, settings) -> Any:
    """The entry ``layer`` stored under ``settings`` in the open ``cached_masks`` block, or None."""
    entry = cached_masks._store.get(layer)
    return entry[1] if entry is not None and entry[0] == settings else None


def cache_store(layer, settings, value) -> None:
    """Keep ``value`` for ``layer`` under ``settings`` until the outermost block exits."""
    cached_masks._store.put(layer, settings, value)


def soft_store(layer, thetas, settings, masks) -> None:
    """Keep the unit masks a training forward of ``layer`` made from ``thetas`` in the open block."""
    soft_masks_for_l0._store.put(layer, thetas, settings, masks)


def soft_lookup(layer, thetas, settings):
    """The unit masks ``layer`` made from these very ``thetas`` in the open block, or None."""
    entry = soft_masks_for_l0._store.get(layer)
    if entry is None or entry[1] != settings:
        return None
    return entry[2] if all(a is b for a, b in zip(entry[0], thetas)) else None
