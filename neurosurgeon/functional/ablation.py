"""Ablations of a discovered subnetwork.

All act on the hard mask h (1 = in the subnetwork), at mask-unit shape:

| ablation           | mask                                                       |
| none               | h                                                          |
| zero_ablate        | 1 - h                                                      |
| random_ablate      | 1 - h, and the subnetwork's entries take fresh values R    |
| randomly_sampled   | ones but sum(h) units drawn from all units                 |
| complement_sampled | ones but sum(h) units drawn from the units where h = 0     |
"""

from __future__ import annotations

import torch

from ._checks import ABLATIONS, check_choice
from .sampling import complement_sampled_mask, randomly_sampled_mask

__all__ = ["ablate"]


def ablate(hard_mask: torch.Tensor, key: torch.Tensor | None, *, ablation: str = "none") -> torch.Tensor:
    """The mask an ablation applies, from the subnetwork's hard mask h.

    Args:
        hard_mask: h, binary, at mask-unit shape.
        key: PRNG key ``(2,)``; needed by the sampled ablations only.
        ablation: one of ``none``, ``zero_ablate``, ``random_ablate``, ``randomly_sampled``,
            ``complement_sampled``. For ``random_ablate`` the returned mask is 1 - h; the
            replacement values come from :mod:`neurosurgeon.functional.reinit`.

    Returns:
        binary mask of h's shape and dtype.
    """
    check_choice("ablation", ablation, ABLATIONS)
    if ablation == "none":
        return hard_mask
    if ablation in ("zero_ablate", "random_ablate"):
        return 1 - hard_mask
    if key is None:
        raise ValueError(f"ablation={ablation!r} draws a random mask and needs a key, got key=None")
    if ablation == "randomly_sampled":
        return randomly_sampled_mask(key, hard_mask)
    return complement_sampled_mask(key, hard_mask)
