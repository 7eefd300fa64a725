"""Whole-model surgery: inject masks into any model, train them, analyse, bake, and evaluate
random-ablation baselines in one vmapped pass.

- :mod:`.inject` / :mod:`.select` / :mod:`.freeze`: choosing layers, replacing them, freezing the base.
- :mod:`.l0` / :mod:`.schedule`: the L0 term and temperature annealing.
- :mod:`.analysis` / :mod:`.io` / :mod:`.bake`: ablations, subnetworks, safetensors, baking.
- :mod:`.baselines`: the functional path (``model_masks``, ``masked_weights``, ``evaluate_baselines``).
- :mod:`.circuit`: NeuroSurgeon 0.1.0's ``CircuitConfig`` / ``CircuitModel``.
- :mod:`.compare` / :mod:`.visualize`: two subnetworks' overlap against chance, and its figure.
- :mod:`.residual` / :mod:`.probing`: residual-stream hooks and subnetwork probing.
"""

from ._layers import mask_layers
from .analysis import set_ablation, set_use_masks, subnetwork
from .bake import bake
from .baselines import evaluate_baselines, masked_state, masked_weights, masks_disabled, model_masks, run_masked
from .circuit import CircuitConfig, CircuitModel
from .compare import SubnetworkComparison, compare_subnetworks
from .probing import SubnetworkProbe, SubnetworkProbeConfig
from .residual import ResidualUpdateModel, ResidualUpdateModelConfig
from .freeze import is_base_frozen, set_freeze_base
from .inject import inject_masks
from .io import load_masks, mask_state, save_masks
from .l0 import l0_penalty, l0_statistics
from .architectures import ARCHITECTURES, attention_heads
from .schedule import TemperatureCallback, TemperatureSchedule, advance_noise, get_temperature, set_temperature
from .select import SUPPORTED_LAYERS
from .visualize import Visualizer, VisualizerConfig

__all__ = [
    "inject_masks", "mask_layers", "SUPPORTED_LAYERS", "set_freeze_base", "is_base_frozen",
    "l0_penalty", "l0_statistics", "TemperatureSchedule", "TemperatureCallback", "set_temperature", "get_temperature",
    "advance_noise", "attention_heads", "ARCHITECTURES",
    "set_ablation", "set_use_masks", "subnetwork", "save_masks", "load_masks", "mask_state", "bake",
    "model_masks", "masked_weights", "masked_state", "run_masked", "masks_disabled", "evaluate_baselines",
    "CircuitConfig", "CircuitModel",
    "compare_subnetworks", "SubnetworkComparison", "Visualizer", "VisualizerConfig",
    "ResidualUpdateModel", "ResidualUpdateModelConfig", "SubnetworkProbe", "SubnetworkProbeConfig",
]
