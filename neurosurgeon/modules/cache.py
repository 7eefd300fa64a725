"""``cached_masks()``: reuse effective weights between forwards while evaluating.

By default a masked layer reuses its hard mask h while theta is unchanged (theta is a
:class:`~neurosurgeon.modules.mask_parameter.MaskParameter`, whose ``.data`` edits are counted)
and forms the effective weight W * h on every forward (one pass over the weight; ~3% of a
1024-token GPT-2-sized Linear forward on CPU). That is always correct for edits of the base
weight, which is the caller's plain parameter: its edits through ``.data`` bump no version
counter, so no cache can see them. Inside ``with cached_masks():`` each layer also reuses the
effective weight it last computed while its mask parameters, weight, bias, key and settings
keep the same tensor versions (an optimizer step, ``load_state_dict``, ``copy_`` under
``no_grad``, any ``.data`` access of theta or reassigning the weight's ``.data`` all change
them). As with ``torch.nn.utils.parametrize.cached()``, in-place edits of the base weight
through ``.data`` inside the context are the caller's to avoid. Leaving the outermost context
makes every entry stale: it is never served again, and is replaced at the layer's next forward
(a training forward drops it, and the cached h, straight away).

Only results without an autograd graph are reused (eval mode with a frozen base, or
``no_grad``): reusing a graph would fail at the second backward.
"""

from __future__ import annotations

__all__ = ["cached_masks", "cache_generation"]

_state = {"depth": 0, "generation": 0}


def cache_generation() -> int | None:
    """The current caching context's id, or None outside ``cached_masks()``."""
    return _state["generation"] if _state["depth"] else None


class cached_masks:
    """Context manager: hard masks and effective weights are computed once per version of the
    tensors they depend on (see the module docstring). Re-entrant.

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
        if _state["depth"] == 0:
            _state["generation"] += 1
        _state["depth"] += 1
        return self

    def __exit__(self, *exc):
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _state["generation"] += 1  # entries stamped inside never match again
        return False
