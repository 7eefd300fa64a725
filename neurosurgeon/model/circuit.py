"""``CircuitConfig`` / ``CircuitModel``: NeuroSurgeon 0.1.0's model wrapper, as a thin shell
over the model-level API, so scripts written for it run after changing their imports."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn
from transformers import PretrainedConfig

from ..compat import v0_conv_neuron_unit
from ..functional._checks import check_bool, check_choice, check_finite
from ..functional.strategies import STRATEGIES
from ..modules import MaskLayer
from ..modules.cache import soft_masks_for_l0
from . import analysis, bake as _bake, io, l0, schedule
from ._layers import mask_layers
from .freeze import freeze_root
from .inject import inject_masks, layer_hparams

__all__ = ["CircuitConfig", "CircuitModel"]

_LAYER_OPTIONS = ("ablation", "mask_unit", "unit_sizes", "mask_bias")
_PREFIX = "wrapped_model."


class CircuitConfig(PretrainedConfig):
    """What to mask and how: NeuroSurgeon 0.1.0's ``CircuitConfig``, a ``transformers.PretrainedConfig``
    (``save_pretrained``, ``from_pretrained``, ``to_json_string``; a 0.1.0 ``config.json`` loads).

    Args:
        mask_method: ``continuous_sparsification``, ``hard_concrete`` or ``magnitude_pruning``.
        mask_hparams: the mask layers' options: ``ablation``, ``mask_unit``, ``mask_bias`` and
            the strategy's hyper-parameters (``mask_init_value``, ``mask_init_percentage``,
            ``temperature``, ``prune_percentage``, ``rule`` (``"v0"``: 0.1.0's magnitude masks),
            ...); keys the strategy does not use are ignored with a warning when the model is
            built, as 0.1.0 ignores them.
        target_layers: module names or glob patterns to mask (layer types work too, but do
            not serialize).
        freeze_base: freeze the base model while masks train (see :func:`set_freeze_base`).
        add_l0: add ``l0_lambda * L0`` to the model output's ``loss`` while training.
        l0_lambda: weight of the L0 term.
        key: optional int seed of the model's PRNG key (an extension; default: torch's global RNG).
    """

    model_type = "neurosurgeon_circuit"

    def __init__(self, mask_method: str = "continuous_sparsification", mask_hparams: dict[str, Any] | None = None,
                 target_layers=None, freeze_base: bool = True, add_l0: bool = True, l0_lambda: float = 1e-8,
                 key: int | torch.Tensor | None = None, **kwargs):
        self.mask_method = check_choice("mask_method", mask_method, tuple(STRATEGIES))
        self.mask_hparams = dict(mask_hparams or {})
        self.target_layers = [] if target_layers is None else (
            [target_layers] if isinstance(target_layers, (str, type)) else list(target_layers))
        self.freeze_base = check_bool("freeze_base", freeze_base)
        self.add_l0 = check_bool("add_l0", add_l0)
        self.l0_lambda = check_finite("l0_lambda", l0_lambda)
        self.key = key
        super().__init__(**kwargs)

    @classmethod
    def from_v0(cls, config) -> "CircuitConfig":
        """Ours from any object with 0.1.0's fields (NeuroSurgeon 0.1.0's own ``CircuitConfig``)."""
        fields = ("mask_method", "mask_hparams", "target_layers", "freeze_base", "add_l0", "l0_lambda")
        missing = [f for f in fields if not hasattr(config, f)]
        if missing:
            raise TypeError(f"config must be a CircuitConfig (or have its fields), got {type(config).__name__} "
                            f"without {missing}")
        return cls(**{f: getattr(config, f) for f in fields}, key=getattr(config, "key", None))


class CircuitModel(nn.Module):
    """A model with masks injected per a :class:`CircuitConfig` (NeuroSurgeon 0.1.0's ``CircuitModel``).

    The wrapped model is the submodule ``wrapped_model`` (masked in place), so state-dict keys
    are ``wrapped_model.*`` as in 0.1.0; ``root_model`` is a read-only alias. A new circuit model
    is in training mode (soft masks, live L0 term); with ``config.freeze_base`` the wrapped
    model's own modules stay in eval mode and only the mask layers follow ``train()``. Calling
    it calls the wrapped model (``nn.Module.__call__``: hooks and positional inputs work) and,
    while training with ``config.add_l0``, adds ``l0_lambda * L0`` (Savarese et al. 2020 eq. 6;
    Louizos et al. 2018 eq. 12) to the output's ``loss`` (a ``ModelOutput``/dict ``loss``, or a
    0-d tensor).

    Args:
        config: a :class:`CircuitConfig`.
        model: the model to mask.
    """

    def __init__(self, config: CircuitConfig, model: nn.Module):
        super().__init__()
        if not isinstance(config, CircuitConfig):
            config = CircuitConfig.from_v0(config)
        if not config.target_layers:
            raise ValueError("config.target_layers is empty; name the layers to mask")
        self.config = config
        self.wrapped_model = model
        options = {k: v for k, v in config.mask_hparams.items() if k in _LAYER_OPTIONS}
        allowed = set(layer_hparams(config.mask_method))
        unused = sorted(set(config.mask_hparams) - set(_LAYER_OPTIONS) - allowed)
        if unused:
            warnings.warn(f"mask_hparams {unused} are not used by mask_method={config.mask_method!r}; ignored",
                          stacklevel=2)
        hparams = {k: v for k, v in config.mask_hparams.items() if k not in _LAYER_OPTIONS and k not in unused}
        inject_masks(model, config.target_layers, strategy=config.mask_method, key=config.key,
                     freeze_base=config.freeze_base, **options, **hparams)
        if config.freeze_base:
            freeze_root(model)
        self.train(True)

    @property
    def root_model(self) -> nn.Module:
        """The wrapped model (read-only alias of ``wrapped_model``)."""
        return self.wrapped_model

    def forward(self, *args, **kwargs):
        """Run the masked model; while training with ``add_l0``, add the L0 term to its loss."""
        if not (self.training and self.config.add_l0):
            return self.wrapped_model(*args, **kwargs)
        with soft_masks_for_l0():  # the L0 term sums the soft masks this forward made (one sigmoid pass)
            output = self.wrapped_model(*args, **kwargs)
            return l0.add_l0_to_output(output, lambda: l0.l0_penalty(self.wrapped_model), self.config.l0_lambda)

    # -- NeuroSurgeon 0.1.0 methods ---------------------------------------------------------
    def _compute_l0_loss(self):
        """The soft L0 term while training (a differentiable 0-d tensor), 0.0 in eval mode."""
        return l0.l0_penalty(self.wrapped_model) if self.training else 0.0

    def compute_l0_statistics(self) -> dict[str, Any]:
        """Hard-mask counts in any mode (the mode is restored): 0.1.0's ``total_l0`` (tensor),
        ``max_l0`` (int), ``layer2l0`` (tensors) and ``layer2maxl0`` (ints), and ours
        (``fraction``, ``layer_l0``, ``layer_max_l0``: floats and ints)."""
        layers = list(mask_layers(self.wrapped_model).values())
        modes = [m.training for m in layers]
        try:
            for m in layers:
                m.train(False)
            stats = l0.l0_statistics(self.wrapped_model)
        finally:
            for m, mode in zip(layers, modes):
                m.training = mode
        return {**stats, "total_l0": torch.tensor(stats["total_l0"]),
                "layer2l0": {n: torch.tensor(v) for n, v in stats["layer_l0"].items()},
                "layer2maxl0": dict(stats["layer_max_l0"])}

    def set_ablate_mode(self, ablation: str, force_resample: bool = False) -> None:
        """Set every mask layer's ablation and its ``force_resample`` flag, as given."""
        check_bool("force_resample", force_resample)
        analysis.set_ablation(self.wrapped_model, ablation)
        for layer in mask_layers(self.wrapped_model).values():
            layer.force_resample = force_resample

    def use_masks(self, value: bool, name_list=None) -> None:
        """Masks on/off for all mask layers or those named (relative to the wrapped model, or
        with 0.1.0's ``wrapped_model.`` prefix; globs allowed: :func:`set_use_masks`)."""
        if name_list is not None:
            name_list = [n[len(_PREFIX):] if isinstance(n, str) and n.startswith(_PREFIX) else n
                         for n in ([name_list] if isinstance(name_list, str) else name_list)]
        analysis.set_use_masks(self.wrapped_model, value, name_list)

    @property
    def temperature(self) -> float | None:
        """The continuous-sparsification temperature shared by every layer; other strategies
        have none: reading gives None and setting is ignored, each with a warning (as in 0.1.0)."""
        if not schedule.anneals_temperature(self.config.mask_method):
            warnings.warn(f"temperature is ignored with mask_method={self.config.mask_method!r}", stacklevel=2)
            return None
        return schedule.get_temperature(self.wrapped_model)

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not schedule.anneals_temperature(self.config.mask_method):
            warnings.warn(f"temperature is ignored with mask_method={self.config.mask_method!r}", stacklevel=2)
            return
        schedule.set_temperature(self.wrapped_model, value)

    def train(self, train_bool: bool = True, **kwargs) -> "CircuitModel":
        """Training mode for the masks (0.1.0's ``train(train_bool)``; ``mode=`` works too); with
        a frozen base the wrapped model's own modules stay in eval. Returns self."""
        return super().train(kwargs.pop("mode", train_bool), **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, taking 0.1.0 convolution neuron masks in 0.1.0's unit.

        A 0.1.0 convolution trained with ``mask_unit="neuron"`` has one mask entry per (output
        channel, kernel position), shared over the input channels: theta ``(out, 1, *kernel)``,
        which is our einops unit ``"o i kh kw -> o 1 kh kw"`` (``"o i k -> o 1 k"`` for 1-d). A
        convolution mask layer whose ``weight_mask_params`` arrives in that shape while it has
        another unit is switched to it first, with a warning naming it; if the load then fails,
        its unit and theta are restored. Outputs and further training are then 0.1.0's.

        Args:
            state_dict: keys ``wrapped_model.*``, as :meth:`state_dict` and 0.1.0 write them.
            strict, assign: as for ``nn.Module.load_state_dict``.

        Returns:
            the missing and unexpected keys, as ``nn.Module.load_state_dict``.
        """
        switched = []
        for name, layer in mask_layers(self.wrapped_model).items():
            theta = state_dict.get(f"{_PREFIX}{name}.weight_mask_params")
            unit = (v0_conv_neuron_unit(layer.layer_kind, layer.weight.shape, theta.shape)
                    if isinstance(theta, torch.Tensor) else None)
            if unit is not None and unit != layer.mask_unit:
                switched.append((name, layer, layer.mask_unit, layer.weight_mask_params))
                layer.mask_unit = unit
        if switched:
            warnings.warn(f"weight_mask_params of {[s[0] for s in switched]} are 0.1.0 convolution neuron masks, one "
                          "entry per (output channel, kernel position): these layers now use that unit, mask_unit="
                          f"{sorted({s[1].mask_unit for s in switched})}", stacklevel=2)
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except Exception:
            for _, layer, unit, theta in switched:
                layer.mask_unit = unit
                layer.weight_mask_params = theta
            raise

    # -- extensions ----------------------------------------------------------------------------
    def mask_layers(self) -> dict[str, MaskLayer]:
        """The mask layers, by name within ``wrapped_model``."""
        return mask_layers(self.wrapped_model)

    def l0_penalty(self) -> torch.Tensor:
        """Sum of the layers' L0 (:func:`l0_penalty`)."""
        return l0.l0_penalty(self.wrapped_model)

    def subnetwork(self) -> dict[str, torch.Tensor]:
        """The hard masks (:func:`subnetwork`)."""
        return analysis.subnetwork(self.wrapped_model)

    def save_masks(self, path) -> None:
        """Write the masks to safetensors (:func:`save_masks`)."""
        io.save_masks(self.wrapped_model, path)

    def load_masks(self, path, *, strict: bool = True) -> None:
        """Read masks written by :meth:`save_masks` (:func:`load_masks`)."""
        io.load_masks(self.wrapped_model, path, strict=strict)

    def bake(self) -> nn.Module:
        """A plain copy of ``wrapped_model`` with the masked weights baked in (:func:`bake`)."""
        return _bake.bake(self.wrapped_model)
