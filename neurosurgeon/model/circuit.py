"""``CircuitConfig`` / ``CircuitModel``: NeuroSurgeon 0.1.0's model wrapper, as a thin shell
over the model-level API, so scripts written for it run after changing their imports."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..functional._checks import check_bool, check_choice, check_finite
from ..functional.strategies import STRATEGIES
from ..modules import MaskLayer
from . import analysis, bake as _bake, io, l0, schedule
from ._layers import mask_layers
from .inject import inject_masks

__all__ = ["CircuitConfig", "CircuitModel"]

_LAYER_OPTIONS = ("ablation", "mask_unit", "mask_bias")


class CircuitConfig:
    """What to mask and how (NeuroSurgeon 0.1.0's ``CircuitConfig`` fields).

    Args:
        mask_method: ``continuous_sparsification``, ``hard_concrete`` or ``magnitude_pruning``.
        mask_hparams: the mask layers' options: ``ablation``, ``mask_unit``, ``mask_bias`` and
            the strategy's hyper-parameters (``mask_init_value``, ``mask_init_percentage``,
            ``temperature``, ``prune_percentage``, ...).
        target_layers: module names, glob patterns or layer types to mask.
        freeze_base: freeze the base model while masks train (see :func:`set_freeze_base`).
        add_l0: add ``l0_lambda * L0`` to the model output's ``loss`` while training.
        l0_lambda: weight of the L0 term.
        key: optional model PRNG key or int seed (an extension; default: torch's global RNG).
    """

    def __init__(
        self,
        mask_method: str = "continuous_sparsification",
        mask_hparams: dict[str, Any] | None = None,
        target_layers=None,
        freeze_base: bool = True,
        add_l0: bool = True,
        l0_lambda: float = 1e-8,
        key: int | torch.Tensor | None = None,
    ):
        self.mask_method = check_choice("mask_method", mask_method, tuple(STRATEGIES))
        self.mask_hparams = dict(mask_hparams or {})
        self.target_layers = [] if target_layers is None else (
            [target_layers] if isinstance(target_layers, (str, type)) else list(target_layers))
        self.freeze_base = check_bool("freeze_base", freeze_base)
        self.add_l0 = check_bool("add_l0", add_l0)
        self.l0_lambda = check_finite("l0_lambda", l0_lambda)
        self.key = key

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (``key`` as given)."""
        return {"mask_method": self.mask_method, "mask_hparams": dict(self.mask_hparams),
                "target_layers": list(self.target_layers), "freeze_base": self.freeze_base,
                "add_l0": self.add_l0, "l0_lambda": self.l0_lambda, "key": self.key}

    def __repr__(self) -> str:
        return "CircuitConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


class CircuitModel(nn.Module):
    """A model with masks injected per a :class:`CircuitConfig` (NeuroSurgeon 0.1.0's ``CircuitModel``).

    The wrapped model is ``self.root_model`` (masked in place). Calling the circuit model
    calls it (``nn.Module.__call__``: hooks and positional inputs work) and, while training
    with ``config.add_l0``, adds ``l0_lambda * L0`` (Savarese et al. 2020 eq. 6; Louizos et al.
    2018 eq. 12) to the output's ``loss`` (a ``ModelOutput``/dict ``loss``, or a 0-d tensor).

    Args:
        config: a :class:`CircuitConfig`.
        root_model: the model to mask.
    """

    def __init__(self, config: CircuitConfig, root_model: nn.Module):
        super().__init__()
        if not isinstance(config, CircuitConfig):
            raise TypeError(f"config must be a CircuitConfig, got {type(config).__name__}")
        if not config.target_layers:
            raise ValueError("config.target_layers is empty; name the layers to mask")
        self.config = config
        self.root_model = root_model
        options = {k: v for k, v in config.mask_hparams.items() if k in _LAYER_OPTIONS}
        hparams = {k: v for k, v in config.mask_hparams.items() if k not in _LAYER_OPTIONS}
        inject_masks(root_model, config.target_layers, strategy=config.mask_method, key=config.key,
                     freeze_base=config.freeze_base, **options, **hparams)
        self.train(root_model.training)

    def forward(self, *args, **kwargs):
        """Run the masked model; while training with ``add_l0``, add the L0 term to its loss."""
        output = self.root_model(*args, **kwargs)
        if self.training and self.config.add_l0:
            output = l0.add_l0_to_output(output, l0.l0_penalty(self.root_model), self.config.l0_lambda)
        return output

    # -- NeuroSurgeon 0.1.0 methods ---------------------------------------------------------
    def compute_l0_statistics(self) -> dict[str, Any]:
        """``total_l0``, ``max_l0`` and per-layer values (:func:`l0_statistics`)."""
        return l0.l0_statistics(self.root_model)

    def set_ablate_mode(self, ablation: str, force_resample: bool = False) -> None:
        """Set every mask layer's ablation (:func:`set_ablation`)."""
        analysis.set_ablation(self.root_model, ablation, force_resample=force_resample)

    def use_masks(self, on: bool, layers=None) -> None:
        """Masks on/off for all mask layers or the named ones (:func:`set_use_masks`)."""
        analysis.set_use_masks(self.root_model, on, layers)

    @property
    def temperature(self) -> float:
        """The continuous-sparsification temperature shared by every layer."""
        return schedule.get_temperature(self.root_model)

    @temperature.setter
    def temperature(self, value: float) -> None:
        schedule.set_temperature(self.root_model, value)

    def train(self, mode: bool = True) -> "CircuitModel":
        """Training mode for the masks (the base stays in eval when frozen); returns self."""
        return super().train(mode)

    # -- extensions ----------------------------------------------------------------------------
    def mask_layers(self) -> dict[str, MaskLayer]:
        """The mask layers, by name within ``root_model``."""
        return mask_layers(self.root_model)

    def l0_penalty(self) -> torch.Tensor:
        """Sum of the layers' L0 (:func:`l0_penalty`)."""
        return l0.l0_penalty(self.root_model)

    def subnetwork(self) -> dict[str, torch.Tensor]:
        """The hard masks (:func:`subnetwork`)."""
        return analysis.subnetwork(self.root_model)

    def save_masks(self, path) -> None:
        """Write the masks to safetensors (:func:`save_masks`)."""
        io.save_masks(self.root_model, path)

    def load_masks(self, path, *, strict: bool = True) -> None:
        """Read masks written by :meth:`save_masks` (:func:`load_masks`)."""
        io.load_masks(self.root_model, path, strict=strict)

    def bake(self) -> nn.Module:
        """A plain copy of ``root_model`` with the masked weights baked in (:func:`bake`)."""
        return _bake.bake(self.root_model)
