"""The pure functional core: every mask, ablation and masked forward as a function of tensors.

No module state, no global RNG: randomness comes from explicit keys
(:mod:`neurosurgeon.functional.random`), so ``torch.func.vmap`` over keys, ``grad`` and
``torch.compile`` all apply.
"""

from . import random
from ._checks import ABLATIONS, LAYER_KINDS, MASK_UNITS, PADDING_MODES, STRATEGIES
from .ablation import ablate
from .continuous_sparsification import (
    continuous_sparsification_hard_mask,
    continuous_sparsification_l0,
    continuous_sparsification_mask,
)
from .cs_l0 import continuous_sparsification_weight_and_l0
from .hard_concrete import (
    hard_concrete_hard_mask,
    hard_concrete_init,
    hard_concrete_l0,
    hard_concrete_mask,
    hard_concrete_mask_from_noise,
)
from .layers import apply_mask, conv1d, conv2d, gpt_conv1d, layer_forward, linear
from .magnitude import magnitude_mask, magnitude_mask_and_threshold, num_pruned
from .masking import (
    LayerMasks,
    MaskedParameters,
    apply_layer_masks,
    check_finite_params,
    draw_keys,
    hard_mask,
    layer_masks,
    mask_l0,
    mask_parameters,
    noise_key,
    soft_mask,
)
from .reinit import reinit_bias, reinit_weight
from .sampling import complement_sampled_mask, randomly_sampled_mask, sample_zeros
from .units import fan_in, mask_shape, out_dim

__all__ = [
    "random",
    "ABLATIONS", "LAYER_KINDS", "MASK_UNITS", "PADDING_MODES", "STRATEGIES",
    "ablate",
    "continuous_sparsification_mask", "continuous_sparsification_hard_mask", "continuous_sparsification_l0",
    "continuous_sparsification_weight_and_l0",
    "hard_concrete_init", "hard_concrete_mask", "hard_concrete_mask_from_noise", "hard_concrete_hard_mask",
    "hard_concrete_l0",
    "apply_mask", "linear", "gpt_conv1d", "conv1d", "conv2d", "layer_forward",
    "magnitude_mask", "magnitude_mask_and_threshold", "num_pruned",
    "LayerMasks", "layer_masks", "apply_layer_masks", "MaskedParameters", "mask_parameters", "noise_key", "hard_mask", "soft_mask", "mask_l0", "draw_keys", "check_finite_params",
    "reinit_weight", "reinit_bias",
    "sample_zeros", "randomly_sampled_mask", "complement_sampled_mask",
    "mask_shape", "fan_in", "out_dim",
]
