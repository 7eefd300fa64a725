"""Ablations of a discovered subnetwork: one table, one row per ablation.

All act on the hard mask h (1 = in the subnetwork), at mask-unit shape:

| ablation           | mask                                                       |
| none               | h                                                          |
| zero_ablate        | 1 - h                                                      |
| random_ablate      | 1 - h, and the subnetwork's entries take fresh values R    |
| randomly_sampled   | ones but sum(h) units drawn from all units                 |
| complement_sampled | ones but sum(h) units drawn from the units where h = 0     |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ._checks import table_row

from .sampling import complement_sampled_mask, randomly_sampled_mask

__all__ = ["Ablation", "ABLATION_ROWS", "ABLATIONS", "RANDOM_ABLATIONS", "ablation_row", "ablate"]


class Ablation(NamedTuple):
    """``mask(h, key)``: the mask applied in place of h. ``draws``: the mask is random (needs a
    key); ``replaces``: the removed entries take fresh values drawn like the layer's own
    initialisation (:mod:`.reinit`) instead of zeros."""

    mask: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    draws: bool = False
    replaces: bool = False

    @property
    def random(self) -> bool:
        """Whether anything is drawn from the layer's key."""
        return self.draws or self.replaces


ABLATION_ROWS: dict[str, Ablation] = {
    "none": Ablation(lambda h, key: h),
    "zero_ablate": Ablation(lambda h, key: 1 - h),
    "random_ablate": Ablation(lambda h, key: 1 - h, replaces=True),
    "randomly_sampled": Ablation(lambda h, key: randomly_sampled_mask(key, h), draws=True),
    "complement_sampled": Ablation(lambda h, key: complement_sampled_mask(key, h), draws=True),
}
ABLATIONS = tuple(ABLATION_ROWS)
RANDOM_ABLATIONS = tuple(name for name, row in ABLATION_ROWS.items() if row.random)


def ablation_row(ablation: str) -> Ablation:
    """The row of ``ablation``; ValueError (TypeError for a non-str) naming the ablations otherwise."""
    return table_row("ablation", ablation, ABLATION_ROWS)


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

    Example:
        >>> ablate(torch.tensor([1.0, 0.0]), None, ablation="zero_ablate")
        tensor([0., 1.])
    """
    row = ablation_row(ablation)
    if row.draws and key is None:
        raise ValueError(f"ablation={ablation!r} draws a random mask and needs a key, got key=None")
    return row.mask(hard_mask, key)
