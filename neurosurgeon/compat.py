"""State-dict conversion to and from NeuroSurgeon 0.1.0: one call each way, for a layer's or a
whole model's (``CircuitModel``'s included) state dict.

Most 0.1.0 checkpoints need no conversion: ``layer.load_state_dict(old, strict=True)`` works,
because our parameter names are the same (``weight``, ``bias``, ``weight_mask_params``,
``bias_mask_params``), our extra buffers (``mask_key``, ``noise_step``) are optional on load,
and the duplicate ``_base_layer.weight``/``_base_layer.bias`` keys 0.1.0's convolution layers
write are accepted. The helpers cover the rest:

- :func:`to_v0_state_dict`: ours -> 0.1.0. The original's strict loading rejects our
  ``mask_key``/``noise_step`` buffers and requires ``_base_layer.*`` keys on convolutions;
  our convolution ``mask_unit="neuron"`` masks (one entry per output channel) are repeated
  over the kernel positions to 0.1.0's shape ``(out, 1, *kernel)``, which gives the same masks.
- :func:`from_v0_state_dict`: 0.1.0 -> ours. It drops the tensors 0.1.0 registers while it
  evaluates a random ablation (with a warning naming them). 0.1.0's convolution
  ``mask_unit="neuron"`` masks, one entry per (output channel, kernel position), pass through:
  they are our einops unit :data:`V0_CONV_NEURON_UNITS` (``"o i kh kw -> o 1 kh kw"`` for 2-d), one
  parameter per entry shared over the input channels, as in 0.1.0. ``CircuitModel.load_state_dict``
  switches such layers to that unit by itself; a layer of your own is built with it.

Example:
    >>> import torch, neurosurgeon
    >>> layer = neurosurgeon.ContSparseConv1d(2, 4, 3, key=0)
    >>> sorted(to_v0_state_dict(layer.state_dict()))
    ['_base_layer.bias', '_base_layer.weight', 'bias', 'weight', 'weight_mask_params']
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import warnings

import torch

from .functional.kinds import KINDS

__all__ = ["to_v0_state_dict", "from_v0_state_dict", "V1_ONLY_BUFFERS", "V0_ABLATION_TENSORS", "V0_CONV_NEURON_UNITS"]

#: Buffers our mask layers keep that NeuroSurgeon 0.1.0 does not know.
V1_ONLY_BUFFERS = ("mask_key", "noise_step")
#: Tensors a 0.1.0 mask layer registers (as Parameters, so they are saved) once it has evaluated
#: ``randomly_sampled``/``complement_sampled`` (the sampled masks, also kept as ``weight_mask``/
#: ``bias_mask``) or ``random_ablate`` (the replacement values). Ours draws these from its key.
V0_ABLATION_TENSORS = ("sampled_weight_mask_params", "sampled_bias_mask_params", "weight_mask", "bias_mask",
                       "random_weight", "random_bias")
#: 0.1.0's convolution ``mask_unit="neuron"`` as our einops unit, by layer kind: one mask entry per
#: (output channel, kernel position), shared over the input channels; theta ``(out, 1, *kernel)``.
V0_CONV_NEURON_UNITS = {kind: f"{KINDS[kind].axes} -> o 1 {KINDS[kind].axes.split(' ', 2)[2]}" for kind in ("conv1d", "conv2d")}
# Names no layer of ours or 0.1.0 uses for anything else: they mark a 0.1.0 mask layer.
_V0_MARKERS = ("weight_mask_params", "sampled_weight_mask_params", "sampled_bias_mask_params", "random_weight")


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
    those Parameters). A convolution ``mask_unit="neuron"`` theta, ``(out, 1, 1[, 1])``, is
    repeated over the kernel positions to 0.1.0's ``(out, 1, *kernel)``: every entry of an
    output channel holds the same value, so 0.1.0's masks (soft and hard) are ours, and a 0.1.0
    model built with ``mask_unit="neuron"`` loads it. Other tensors are shared, not copied, and
    entries of other modules are kept as is.

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
            theta = state_dict.get(p + "weight_mask_params")
            per_channel, per_slot = (w.shape[0],) + (1,) * (w.dim() - 1), (w.shape[0], 1, *w.shape[2:])
            if theta is not None and tuple(theta.shape) == per_channel != per_slot:
                out[p + "weight_mask_params"] = theta.expand(per_slot).clone()
            out[p + "_base_layer.weight"] = w
            if p + "bias" in state_dict:
                out[p + "_base_layer.bias"] = state_dict[p + "bias"]
    return out


def from_v0_state_dict(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A copy of a NeuroSurgeon 0.1.0 state dict that our layers load with ``strict=True``.

    - drops the duplicate ``_base_layer.weight``/``_base_layer.bias`` keys of convolutions
      (ours also accepts them directly);
    - drops the tensors a 0.1.0 layer registers while evaluating a random ablation
      (:data:`V0_ABLATION_TENSORS`) and warns, naming them: ours draws sampled masks and
      replacement values from its key instead, so those draws are not carried over.

    Every mask parameter passes through unchanged. 0.1.0 convolution "neuron" masks, shape
    ``(out, 1, *kernel)``, load into a layer built with ``mask_unit=V0_CONV_NEURON_UNITS[kind]``
    (``CircuitModel.load_state_dict`` switches those layers itself): 0.1.0's unit exactly, so
    outputs match and further training updates the same parameters 0.1.0's would.

    Args:
        state_dict: a 0.1.0 ``state_dict()`` of a mask layer or of a model containing them.

    Returns:
        a new ``OrderedDict``.
    """
    _check_state_dict(state_dict)
    layers = {k[: len(k) - len(m)] for k in state_dict for m in _V0_MARKERS if k == m or k.endswith("." + m)}
    dropped = [p + name for p in sorted(layers) if p + "weight" in state_dict
               for name in V0_ABLATION_TENSORS if p + name in state_dict]
    if dropped:
        warnings.warn(f"from_v0_state_dict dropped 0.1.0's registered ablation tensors {dropped}: sampled masks and "
                      "random_ablate values are drawn from each layer's mask_key here", UserWarning, stacklevel=2)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    skip = set(dropped)
    for k, v in state_dict.items():
        if k in skip:
            continue
        if k.startswith("_base_layer.") or "._base_layer." in k:
            base = k.replace("_base_layer.", "", 1) if k.startswith("_base_layer.") else k.replace("._base_layer.", ".", 1)
            if base in state_dict:
                continue  # the same Parameter is saved under its own name as well
            out[base] = v
            continue
        out[k] = v
    return out


def v0_conv_neuron_unit(kind: str, weight_shape, theta_shape) -> str | None:
    """The unit of :data:`V0_CONV_NEURON_UNITS` when ``theta_shape`` is 0.1.0's convolution neuron
    mask ``(out, 1, *kernel)`` for a weight of ``weight_shape``, else None. With a kernel of ones
    that shape is our own ``mask_unit="neuron"``, so None."""
    weight_shape, theta_shape = tuple(weight_shape), tuple(theta_shape)
    if kind not in V0_CONV_NEURON_UNITS or all(s == 1 for s in weight_shape[2:]):
        return None
    return V0_CONV_NEURON_UNITS[kind] if theta_shape == (weight_shape[0], 1, *weight_shape[2:]) else None
