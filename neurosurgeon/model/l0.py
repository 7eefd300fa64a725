"""The L0 term of mask training, and the statistics to log.

Continuous sparsification (Savarese et al. 2020, eq. 6) and hard concrete (Louizos et al.
2018, eq. 12) both train ``task_loss + lambda * sum_layers L0(layer)``; each layer's L0 comes
from :meth:`neurosurgeon.modules.MaskLayer.calculate_l0` (soft surrogate while training, the
count of kept entries when hard).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ._layers import require_mask_layers

__all__ = ["l0_penalty", "l0_statistics", "add_l0_to_output"]


def l0_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of every mask layer's L0: the regulariser to add (times lambda) to a task loss.

    Differentiable in the mask parameters while the layers train (soft masks); the count of
    kept entries when they are hard. Layers registered twice or tied count once per layer.
    Called after the forward inside :class:`~neurosurgeon.soft_masks_for_l0`, continuous
    sparsification's term sums the masks that forward made instead of computing them again.

    Args:
        model: a model with mask layers.

    Returns:
        0-d tensor on the first mask layer's device.

    Example:
        >>> import torch, torch.nn as nn, neurosurgeon as ns
        >>> net = nn.Sequential(nn.Linear(4, 3)); _ = ns.inject_masks(net, "0", key=0)
        >>> ns.l0_penalty(net.train()).item()  # 12 weights, sigma(0) = 0.5 each
        6.0
    """
    total = None
    for layer in require_mask_layers(model).values():
        l0 = layer.calculate_l0()
        total = l0 if total is None else total + l0.to(total.device)
    return total


@torch.no_grad()
def l0_statistics(model: nn.Module) -> dict[str, Any]:
    """Per-layer and total L0 for logging, in the layers' current mode.

    Args:
        model: a model with mask layers.

    Returns:
        dict with ``total_l0`` (float), ``max_l0`` (int, the number of maskable entries),
        ``fraction`` (total_l0 / max_l0), and ``layer_l0`` / ``layer_max_l0``: dicts by layer
        name.
    """
    layers = require_mask_layers(model)
    layer_l0 = {n: float(m.calculate_l0()) for n, m in layers.items()}
    layer_max = {n: int(m.calculate_max_l0()) for n, m in layers.items()}
    total, most = sum(layer_l0.values()), sum(layer_max.values())
    return {
        "total_l0": total,
        "max_l0": most,
        "fraction": total / most if most else 0.0,
        "layer_l0": layer_l0,
        "layer_max_l0": layer_max,
    }


def add_l0_to_output(output, penalty: Callable[[], torch.Tensor], l0_lambda: float):
    """Add ``l0_lambda * penalty()`` to a model output's ``loss`` (a ``ModelOutput``, a dict with
    a ``loss`` key, or a bare loss tensor). Outputs without a loss are returned unchanged, and
    ``penalty`` is then not called: a model run for its hidden states computes no L0 term.

    Returns:
        the output, with its loss replaced.
    """
    if isinstance(output, torch.Tensor):
        return output + l0_lambda * penalty().to(output.device) if output.dim() == 0 else output
    if isinstance(output, dict) and output.get("loss") is not None:
        output["loss"] = output["loss"] + l0_lambda * penalty().to(output["loss"].device)
    return output
