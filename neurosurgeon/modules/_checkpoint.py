"""Loading a mask layer's state dict: ours, or one NeuroSurgeon 0.1.0 wrote."""

from __future__ import annotations

import torch

from ..functional.layer import check_finite_tensor

__all__ = ["Checkpointed"]


class Checkpointed:
    """State-dict loading for :class:`~neurosurgeon.MaskLayer`: 0.1.0's checkpoints (no key, no noise
    step, duplicate convolution keys) load as they are; a mismatch changes nothing."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # State dicts written by NeuroSurgeon 0.1.0 carry no key or noise step: keep ours.
        for name in self._extra_buffers:
            state_dict.setdefault(prefix + name, getattr(self, name))
        # 0.1.0's conv layers also save their wrapped layer, whose weight/bias are the same
        # Parameters as ``weight``/``bias``: accept those duplicate keys and drop them.
        for name in ("weight", "bias"):
            dup = state_dict.pop(prefix + "_base_layer." + name, None)
            if dup is not None:
                state_dict.setdefault(prefix + name, dup)
        # All or nothing: with any shape mismatch, report every one and change no tensor
        # (torch alone would copy the matching entries before raising).
        mismatches = [
            f"size mismatch for {prefix}{name}: copying a param with shape {tuple(state_dict[prefix + name].shape)} "
            f"from checkpoint, the shape in current model is {tuple(t.shape)}."
            for name, t in (*self._parameters.items(), *self._buffers.items())
            if t is not None and isinstance(state_dict.get(prefix + name), torch.Tensor)
            and tuple(state_dict[prefix + name].shape) != tuple(t.shape)
        ]
        if mismatches:
            error_msgs.extend(mismatches)
            return
        if self._is_hard() and self._row.has_params:  # new parameters that will make a hard mask
            for name in ("weight_mask_params", "bias_mask_params"):
                if isinstance(state_dict.get(prefix + name), torch.Tensor):
                    check_finite_tensor(state_dict[prefix + name], f"{prefix or type(self).__name__ + '.'}{name}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def __getstate__(self):
        # The last forward's masks may be non-leaf tensors (training), which copy.deepcopy refuses.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_last": None}
