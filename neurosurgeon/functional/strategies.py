"""One table of pure functions per masking strategy: adding a strategy is adding a row.

Each row gives the initial value of theta, the soft (training) mask, the hard mask, the soft
L0 term and the strategy's hyper-parameters with their defaults. The defaults are the ones
the per-paper modules define, so every entry point (functions, layers, model surgery) agrees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from . import continuous_sparsification as cs
from . import hard_concrete as hc
from . import magnitude as mp
from ._checks import check_choice, check_fraction, check_stretch, check_temperature

__all__ = ["Strategy", "STRATEGIES", "resolve_hparams"]


class Strategy(NamedTuple):
    """A masking strategy as pure functions of its parameters.

    ``soft(theta, key, **mask_hparams)`` and ``l0(theta, **mask_hparams)`` are None for a
    strategy that does not train (magnitude pruning); ``hard(params, **mask_hparams)`` takes
    theta, or the weight itself when ``has_params`` is False. ``init(**init_hparams)`` is theta's
    initial value.
    """

    init: Callable[..., float] | None
    soft: Callable[..., torch.Tensor] | None
    hard: Callable[..., torch.Tensor]
    l0: Callable[..., torch.Tensor] | None
    mask_hparams: dict[str, Any]  # what the masks read, with defaults
    init_hparams: dict[str, Any]  # what theta's initial value reads, with defaults
    needs_key: bool = False  # the soft mask draws noise
    has_params: bool = True  # theta exists (magnitude pruning masks the weight by its values)
    l0_is_mask_sum: bool = False  # the soft L0 is the soft mask's sum: a forward's mask can serve it
    anneal: str | None = None  # the hyper-parameter a training schedule raises (continuous sparsification's beta)
    init_hparam: str | None = None  # the knob of theta's initial value, by its layer name


STRATEGIES: dict[str, Strategy] = {
    "continuous_sparsification": Strategy(
        init=cs.continuous_sparsification_init,
        soft=lambda theta, key, *, temperature: cs.continuous_sparsification_mask(theta, temperature=temperature),
        hard=lambda theta, *, temperature=None: cs.continuous_sparsification_hard_mask(theta),
        l0=cs.continuous_sparsification_l0,
        mask_hparams={"temperature": cs.TEMPERATURE},
        init_hparams={"mask_init_value": cs.MASK_INIT_VALUE},
        l0_is_mask_sum=True,
        anneal="temperature",
        init_hparam="mask_init_value",
    ),
    "hard_concrete": Strategy(
        init=hc.hard_concrete_init,
        soft=hc.hard_concrete_mask,
        hard=lambda theta, *, temperature=None, left, right: hc.hard_concrete_hard_mask(theta, left=left, right=right),
        l0=hc.hard_concrete_l0,
        mask_hparams={"temperature": hc.TEMPERATURE, "left": hc.LEFT, "right": hc.RIGHT},
        init_hparams={"mask_init_percentage": hc.MASK_INIT_PERCENTAGE},
        needs_key=True,
        init_hparam="mask_init_percentage",
    ),
    "magnitude_pruning": Strategy(
        init=None,
        soft=None,
        hard=mp.magnitude_mask,
        l0=None,
        mask_hparams={"prune_percentage": mp.PRUNE_PERCENTAGE, "rule": mp.RULE},
        init_hparams={},
        has_params=False,
    ),
}

_CHECKS = {"temperature": check_temperature, "prune_percentage": lambda v: check_fraction("prune_percentage", v),
           "rule": lambda v: check_choice("rule", v, mp.RULES)}


def resolve_hparams(strategy: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy's mask hyper-parameters: ``hparams`` checked, the rest at their defaults.

    Raises:
        ValueError: an unknown strategy; a hyper-parameter the strategy does not have (naming
            the allowed ones); a bad value.
    """
    row = strategy_row(strategy)
    unknown = sorted(set(hparams) - set(row.mask_hparams))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} for strategy {strategy!r}; "
                         f"allowed: {sorted(row.mask_hparams)}")
    out = {**row.mask_hparams, **hparams}
    for name, check in _CHECKS.items():
        if name in out:
            out[name] = check(out[name])
    if "left" in out:
        out["left"], out["right"] = check_stretch(out["left"], out["right"])
    return out


def strategy_row(strategy: str) -> Strategy:
    """The table row of ``strategy``; ValueError naming the strategies otherwise."""
    if not isinstance(strategy, str):
        raise TypeError(f"strategy must be a str, one of {list(STRATEGIES)}; got {strategy!r}")
    try:
        return STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}") from None
