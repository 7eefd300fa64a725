"""State-dict conversion to and from NeuroSurgeon 0.1.0.

Most 0.1.0 checkpoints need no conversion: ``layer.load_state_dict(old, strict=True)`` works,
because our parameter names are the same (``weight``, ``bias``, ``weight_mask_params``,
``bias_mask_params``), our extra buffers (``mask_key``, ``noise_step``) are optional on load,
and the duplicate ``_base_layer.weight``/``_base_layer.bias`` keys 0.1.0's convolution layers
write are accepted. Two cases need these helpers:

- :func:`to_v0_state_dict`: ours -> 0.1.0. The original's strict loading rejects our
  ``mask_key``/``noise_step`` buffers and requires ``_base_layer.*`` keys on convolutions.
- :func:`from_v0_state_dict`: 0.1.0 -> ours, for convolutions trained with
  ``mask_unit="neuron"``. 0.1.0 gave those one mask entry per (output channel, kernel
  position), shape ``(out, 1, *kernel)``; ours has one per output channel, ``(out, 1, 1[, 1])``
  . The helper expands such masks to the full weight shape, which a layer
  built with ``mask_unit="weight"`` loads, giving the same masks.

Example:
    >>> import torch, neurosurgeon
    >>> layer = neurosurgeon.ContSparseConv1d(2, 4, 3, key=0)
    >>> sorted(to_v0_state_dict(layer.state_dict()))
    ['_base_layer.bias', '_base_layer.weight', 'bias', 'weight', 'weight_mask_params']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch

__all__ = ["to_v0_state_dict", "from_v0_state_dict", "V1_ONLY_BUFFERS"]

#: Buffers our mask layers keep that NeuroSurgeon 0.1.0 does not know.
V1_ONLY_BUFFERS = ("mask_key", "noise_step")


def _check_state_dict(state_dict) -> None:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")


def _mask_layer_prefixes(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Prefixes (``""`` or ``"path.to.layer."``) of our mask layers: those holding a ``mask_key``."""
    return [k[: -len("mask_key")] for k in state_dict if k == "mask_key" or k.endswith(".mask_key")]


def to_v0_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A copy of ``state_dict`` (of a mask layer or of a model containing mask layers) that
    NeuroSurgeon 0.1.0 loads with ``strict=True``.

    For every mask layer (recognised by its ``mask_key`` buffer) it drops ``mask_key`` and
    ``noise_step`` and, for convolutions (3-D or 4-D weight), adds ``_base_layer.weight`` and
    ``_base_layer.bias`` (0.1.0's convolution layers register the wrapped layer, which shares
    those Parameters). Tensors are shared, not copied. Entries of other modules are kept as is.

    Note that 0.1.0 has no ``mask_bias`` on magnitude pruning in its state dict and no key:
    random ablations and hard-concrete noise in 0.1.0 come from torch's global RNG.

    Args:
        state_dict: a mapping of names to tensors, as ``module.state_dict()`` returns.

    Returns:
        a new ``OrderedDict``, in 0.1.0's key order for each layer.
    """
    _check_state_dict(state_dict)
    prefixes = set(_mask_layer_prefixes(state_dict))
    drop = {p + name for p in prefixes for name in V1_ONLY_BUFFERS}
    out: OrderedDict[str, torch.Tensor] = OrderedDict((k, v) for k, v in state_dict.items() if k not in drop)
    for p in sorted(prefixes):
        w = state_dict.get(p + "weight")
        if w is not None and w.dim() in (3, 4):
            out[p + "_base_layer.weight"] = w
            if p + "bias" in state_dict:
                out[p + "_base_layer.bias"] = state_dict[p + "bias"]
    return out


def from_v0_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A copy of a NeuroSurgeon 0.1.0 state dict that our layers load with ``strict=True``.

    - drops the duplicate ``_base_layer.weight``/``_base_layer.bias`` keys of convolutions
      (ours also accepts them directly);
    - expands 0.1.0 convolution "neuron" masks, shape ``(out, 1, *kernel)``, to the weight's
      full shape ``(out, in/groups, *kernel)``. Load the result into a layer built with
      ``mask_unit="weight"``: each hard mask entry equals the 0.1.0 one, so eval outputs
      match. (During further training, the in-channel copies no longer share one parameter.)

    Linear and GPT-2 Conv1D masks, and every weight-level mask, are passed through unchanged.

    Args:
        state_dict: a 0.1.0 ``state_dict()`` of a mask layer or of a model containing them.

    Returns:
        a new ``OrderedDict``.
    """
    _check_state_dict(state_dict)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in state_dict.items():
        if k.startswith("_base_layer.") or "._base_layer." in k:
            base = k.replace("_base_layer.", "", 1) if k.startswith("_base_layer.") else k.replace("._base_layer.", ".", 1)
            if base in state_dict:
                continue  # the same Parameter is saved under its own name as well
            out[base] = v
            continue
        out[k] = v
    for k, theta in list(out.items()):
        if not (k == "weight_mask_params" or k.endswith(".weight_mask_params")):
            continue
        w = out.get(k[: -len("weight_mask_params")] + "weight")
        if w is None or w.dim() not in (3, 4) or tuple(theta.shape) == tuple(w.shape):
            continue
        per_kernel = (w.shape[0], 1, *w.shape[2:])
        # With a 1x1 kernel 0.1.0's neuron shape is ours: leave it loadable as a neuron mask.
        if tuple(theta.shape) == per_kernel and any(s != 1 for s in w.shape[2:]):
            out[k] = theta.expand(w.shape).clone()
    return out
