"""``cached_masks()``: reuse each layer's masked weight inside one block, the way
``torch.nn.utils.parametrize.cached()`` does.

Outside the block every forward recomputes its masks, so nothing can be stale. Inside it, a
mask layer computes its effective weight and bias once (per mode and settings) and reuses
them until the outermost block exits, which forgets everything. Editing parameters inside the
block is the caller's contract, as with ``parametrize.cached()``. Only results without an
autograd graph are kept (evaluation under ``no_grad``, or a frozen base): reusing a graph would
fail at the second backward.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cached_masks"]

_state: dict[str, Any] = {"depth": 0, "entries": {}}


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
