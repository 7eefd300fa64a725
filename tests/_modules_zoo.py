"""Small instances of every mask layer class, shared by the module tests (not a test file)."""

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional._checks import RANDOM_ABLATIONS
from neurosurgeon.functional import layer as FL

STRATEGIES = ["ContSparse", "HardConcrete", "MagPrune"]
#: class-name prefix -> strategy name of the functional core
STRATEGY_OF_PREFIX = {"ContSparse": "continuous_sparsification", "HardConcrete": "hard_concrete",
                      "MagPrune": "magnitude_pruning"}
LEARNED = ["ContSparse", "HardConcrete"]
SUFFIXES = ["Linear", "GPTConv1D", "Conv1d", "Conv2d"]
ABLATIONS = ["none", "zero_ablate", "random_ablate", "randomly_sampled", "complement_sampled"]
ALL_CLASSES = [s + x for s in STRATEGIES for x in SUFFIXES]
#: suffix -> (constructor arguments, an input shape, the functional core's layer kind), for
#: tests that build layers with the constructors rather than ``from_layer``
CONSTRUCTOR_CASES = {
    "Linear": ((6, 4), (3, 6), "linear"),
    "GPTConv1D": ((4, 6), (3, 6), "gpt_conv1d"),
    "Conv1d": ((2, 4, 3), (2, 2, 7), "conv1d"),
    "Conv2d": ((2, 4, 2), (2, 2, 5, 5), "conv2d"),
}


def split_name(name: str) -> tuple[str, str]:
    """A mask layer class name -> (the core's strategy name, the layer suffix)."""
    prefix = next(p for p in STRATEGIES if name.startswith(p))
    return STRATEGY_OF_PREFIX[prefix], name[len(prefix):]


def base_layer(suffix: str, dtype=torch.float32, bias: bool = True) -> nn.Module:
    """A plain layer (5 inputs / 2 channels in, 4 out) with seeded weights."""
    torch.manual_seed(0)
    layer = {
        "Linear": lambda: nn.Linear(5, 4, bias=bias),
        "GPTConv1D": lambda: Conv1D(4, 5),
        "Conv1d": lambda: nn.Conv1d(2, 4, 3, bias=bias),
        "Conv2d": lambda: nn.Conv2d(2, 4, (3, 2), bias=bias),
    }[suffix]()
    if suffix == "GPTConv1D":
        nn.init.normal_(layer.bias, std=0.1)  # a zero bias would hide bias bugs
    return layer.to(dtype)


def example_input(suffix: str, dtype=torch.float32, batch: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = {"Linear": (batch, 5), "GPTConv1D": (batch, 2, 5), "Conv1d": (batch, 2, 6), "Conv2d": (batch, 2, 5, 4)}[suffix]
    return torch.randn(shape, generator=g).to(dtype)


def mask_layer(name: str, key: int = 0, dtype=torch.float32, **kwargs) -> ns.MaskLayer:
    """``<Strategy><Suffix>.from_layer(base_layer(suffix))`` with mixed-sign mask parameters
    (magnitude pruning: 60% pruned), so the subnetwork is non-trivial and at most half the layer."""
    strategy = next(s for s in STRATEGIES if name.startswith(s))
    suffix = name[len(strategy):]
    if strategy == "MagPrune":
        kwargs.setdefault("prune_percentage", 0.6)  # h small enough for complement sampling
    layer = getattr(ns, name).from_layer(base_layer(suffix, dtype), key=key, **kwargs)
    mixed_sign_(layer)
    return layer


def mixed_sign_(layer: ns.MaskLayer, seed: int = 2) -> None:
    """Mask parameters with about a third positive, so h is non-trivial and complement sampling works."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("weight_mask_params", "bias_mask_params"):
            p = getattr(layer, name, None)
            if isinstance(p, nn.Parameter):
                p.copy_((torch.rand(p.shape, generator=g) - 0.67).to(p.dtype) * 4)


def suffix_of(name: str) -> str:
    return next(x for x in SUFFIXES if name.endswith(x))


def reference_key(layer: ns.MaskLayer, strategy: str, hard: bool, noise_step=None):
    """The key a layer's forward hands the functional core: its mask key for a random ablation,
    the per-step noise key while training hard concrete, else none."""
    if hard:
        return layer.mask_key if layer.ablation in RANDOM_ABLATIONS else None
    if strategy == "hard_concrete":
        return FL.noise_key(layer.mask_key, noise_step)
    return None
