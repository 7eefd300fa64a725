"""Methods kept only so that code written for NeuroSurgeon 0.1.0 runs unchanged."""

from __future__ import annotations

import torch

__all__ = ["V0Methods"]

_PARAM_TYPES = ("weight_mask_params", "bias_mask_params")


class V0Methods:
    """0.1.0's private-but-used methods of a mask layer, on top of the public API."""

    def _compute_mask(self, param_type: str) -> torch.Tensor:
        """The mask the layer would apply now to its weight (``"weight_mask_params"``) or bias
        (``"bias_mask_params"``), at the parameter's shape: what 0.1.0's method of this name gives.
        A hard-concrete training mask draws (and uses up) one noise step, as a forward does."""
        if param_type not in _PARAM_TYPES:
            raise ValueError(f"param_type must be one of {list(_PARAM_TYPES)}, got {param_type!r}")
        p = self.masked_parameters()
        mask = p.weight_mask if param_type == "weight_mask_params" else p.bias_mask
        if mask is None:
            raise ValueError(f"{type(self).__name__} does not mask its {param_type.split('_')[0]}")
        return mask
