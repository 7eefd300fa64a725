"""The pure functional core: every mask, ablation and masked forward as a function of tensors.

No module state, no global RNG, no caches: randomness comes from explicit keys
(:mod:`neurosurgeon.functional.random`), so ``torch.func.vmap`` over keys, ``grad`` and
``torch.compile`` all apply. One formula per paper, one file per paper; one table per axis ties
them together: strategies (:data:`STRATEGIES`), layer kinds (:data:`KINDS`), ablations
(:data:`ABLATIONS`) and mask units (einops patterns, :func:`unit_shape`).
"""

from . import random
from .ablation import ABLATIONS, ablate
from .continuous_sparsification import (
    continuous_sparsification_hard_mask,
    continuous_sparsification_l0,
    continuous_sparsification_mask,
)
from .hard_concrete import hard_concrete_hard_mask, hard_concrete_init, hard_concrete_l0, hard_concrete_mask
from .kinds import KINDS, layer_forward
from .layer import MaskedParameters, hard_mask, mask_l0, mask_parameters
from .magnitude import magnitude_mask
from .sampling import complement_sampled_mask, randomly_sampled_mask
from .strategies import STRATEGIES, Strategy
from .units import expand_mask, reduce_mask, unit_shape

__all__ = [
    "random", "STRATEGIES", "Strategy", "KINDS", "ABLATIONS",
    "continuous_sparsification_mask", "continuous_sparsification_hard_mask", "continuous_sparsification_l0",
    "hard_concrete_init", "hard_concrete_mask", "hard_concrete_hard_mask", "hard_concrete_l0",
    "magnitude_mask",
    "ablate", "randomly_sampled_mask", "complement_sampled_mask",
    "hard_mask", "mask_l0", "mask_parameters", "MaskedParameters", "layer_forward",
    "unit_shape", "expand_mask", "reduce_mask",
]
