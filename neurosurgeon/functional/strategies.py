"""One table of masking strategies: adding a strategy is adding a row (and a file for its paper).

Every row's functions have one fixed signature; tensors and the key come first, the resolved
mask unit (:class:`~neurosurgeon.functional.units.MaskUnit`) and every hyper-parameter of the
row as keywords:

- ``init(*, unit, **hp) -> float``: theta's initial value;
- ``soft(theta, key, *, unit, **hp) -> Tensor``: the training mask, theta's shape;
- ``hard(params, *, unit, **hp) -> Tensor``: the subnetwork h, binary, in params' dtype;
- ``l0(theta, *, unit, **hp) -> Tensor``: the soft L0 term, summed over theta (0-d).

The defaults are the ones the per-paper modules define, so every entry point (functions,
layers, model surgery) agrees. The layers take the hyper-parameters under the same names.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import continuous_sparsification as cs
from . import hard_concrete as hc
from . import magnitude as mp
from ._checks import check_choice, check_finite, check_fraction, check_stretch, check_temperature, table_row

__all__ = ["Strategy", "STRATEGIES", "strategy_row", "resolve_hparams", "check_unit", "knobs"]


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A masking strategy as pure functions of its parameters (signatures in the module docstring).

    Attributes:
        hard: h from theta (or, without theta, from the weight itself).
        hparams: every hyper-parameter with its default, by the layers' keyword names.
        check: ``check(hp) -> hp``: validates a full set of hyper-parameters (each row its own).
        init, soft, l0: None for a strategy without trainable theta (magnitude pruning).
        needs_key: the soft mask draws noise.
        l0_is_mask_sum: the soft L0 is the soft mask's sum, so a forward's mask can serve it.
        anneal: the hyper-parameter a training schedule raises (continuous sparsification's beta).
        init_hparam: the hyper-parameter of theta's initial value.
        units: the mask units the strategy supports (None: any).
        hinted_hard: optional ``(params, hint, *, unit, **hp) -> (h, hint)``: h again, faster
            given the hint the previous call returned (the same h whatever the hint).
        class_prefix: the prefix of the layer classes (0.1.0's ``ContSparse`` in ``ContSparseLinear``).
        v0_positional: the constructor arguments after the layer's own, in 0.1.0's order.
        renamed: old hyper-parameter name -> new, accepted with a DeprecationWarning.
    """

    hard: Callable[..., torch.Tensor]
    hparams: Mapping[str, Any]
    check: Callable[[dict], dict] = dict
    init: Callable[..., float] | None = None
    soft: Callable[..., torch.Tensor] | None = None
    l0: Callable[..., torch.Tensor] | None = None
    needs_key: bool = False
    l0_is_mask_sum: bool = False
    anneal: str | None = None
    init_hparam: str | None = None
    units: tuple[str, ...] | None = None
    hinted_hard: Callable[..., tuple[torch.Tensor, Any]] | None = None
    class_prefix: str = ""
    v0_positional: tuple[str, ...] = ("ablation", "mask_unit", "mask_bias")
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def has_params(self) -> bool:
        """Whether theta exists (magnitude pruning masks the weight by its own values)."""
        return self.init is not None

    @property
    def default_unit(self) -> str:
        """The mask unit a layer gets unless told: ``weight``, or the first the row supports."""
        return (self.units or ("weight",))[0]


def knobs(fn: Callable[..., Any], *names: str) -> Callable[..., Any]:
    """``fn`` in a row's signature: the tensors passed on, the unit dropped, and only the
    hyper-parameters ``names`` passed (as keywords), for a per-paper function that needs no unit."""
    return lambda *tensors, unit, **hp: fn(*tensors, **{n: hp[n] for n in names})


def _check_cs(hp: dict) -> dict:
    return {**hp, "temperature": check_temperature(hp["temperature"]),
            "mask_init_value": check_finite("mask_init_value", hp["mask_init_value"])}


def _check_hc(hp: dict) -> dict:
    left, right = check_stretch(hp["left_stretch"], hp["right_stretch"])
    return {**hp, "temperature": check_temperature(hp["temperature"]), "left_stretch": left, "right_stretch": right,
            "mask_init_percentage": check_fraction("mask_init_percentage", hp["mask_init_percentage"])}


def _check_mp(hp: dict) -> dict:
    return {**hp, "prune_percentage": check_fraction("prune_percentage", hp["prune_percentage"]),
            "rule": check_choice("rule", hp["rule"], mp.RULES)}


_STRETCH = ("left_stretch", "right_stretch")

STRATEGIES: dict[str, Strategy] = {
    "continuous_sparsification": Strategy(
        init=knobs(cs.continuous_sparsification_init, "mask_init_value"),
        soft=lambda theta, key, *, unit, temperature, **hp: cs.continuous_sparsification_mask(theta, temperature=temperature),
        hard=knobs(cs.continuous_sparsification_hard_mask),
        l0=knobs(cs.continuous_sparsification_l0, "temperature"),
        hparams={"temperature": cs.TEMPERATURE, "mask_init_value": cs.MASK_INIT_VALUE},
        check=_check_cs,
        l0_is_mask_sum=True,
        anneal="temperature",
        init_hparam="mask_init_value",
        class_prefix="ContSparse",
        v0_positional=("ablation", "mask_unit", "mask_bias", "mask_init_value"),
    ),
    "hard_concrete": Strategy(
        init=knobs(hc.hard_concrete_init, "mask_init_percentage"),
        soft=knobs(hc.hard_concrete_mask, "temperature", *_STRETCH),
        hard=knobs(hc.hard_concrete_hard_mask, *_STRETCH),
        l0=knobs(hc.hard_concrete_l0, "temperature", *_STRETCH),
        hparams={"temperature": hc.TEMPERATURE, "left_stretch": hc.LEFT, "right_stretch": hc.RIGHT,
                 "mask_init_percentage": hc.MASK_INIT_PERCENTAGE},
        check=_check_hc,
        needs_key=True,
        init_hparam="mask_init_percentage",
        class_prefix="HardConcrete",
        v0_positional=("ablation", "mask_unit", "mask_bias", "mask_init_percentage"),
        renamed={"left": "left_stretch", "right": "right_stretch"},
    ),
    "magnitude_pruning": Strategy(
        hard=knobs(mp.magnitude_mask, "prune_percentage", "rule"),
        hparams={"prune_percentage": mp.PRUNE_PERCENTAGE, "rule": mp.RULE},
        check=_check_mp,
        units=("weight",),
        hinted_hard=lambda w, hint, *, unit, prune_percentage, rule: mp.magnitude_mask_and_threshold(
            w, threshold_hint=hint, prune_percentage=prune_percentage, rule=rule),
        class_prefix="MagPrune",
        v0_positional=("ablation", "mask_bias", "prune_percentage"),
    ),
}


def strategy_row(strategy: str) -> Strategy:
    """The table row of ``strategy``; ValueError (TypeError for a non-str) naming the strategies otherwise."""
    return table_row("strategy", strategy, STRATEGIES)


def resolve_hparams(strategy: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of ``strategy``: ``hparams`` checked by the row, the rest at their defaults.

    Raises:
        ValueError: an unknown strategy; a hyper-parameter the strategy does not have (naming
            the allowed ones); a bad value.
    """
    row = strategy_row(strategy)
    hparams = dict(hparams)
    for old, new in row.renamed.items():
        if old in hparams:
            warnings.warn(f"{strategy}'s hyper-parameter {old!r} is now {new!r}", DeprecationWarning, stacklevel=3)
            hparams[new] = hparams.pop(old)
    unknown = sorted(set(hparams) - set(row.hparams))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {unknown} for strategy {strategy!r}; allowed: {sorted(row.hparams)}")
    return row.check({**row.hparams, **hparams})


def check_unit(strategy: str, mask_unit: str) -> str:
    """``mask_unit`` if ``strategy`` supports it; ValueError naming the units it does otherwise."""
    row = strategy_row(strategy)
    if row.units is not None and mask_unit not in row.units:
        raise ValueError(f"strategy {strategy!r} supports mask_unit {list(row.units)} only, got {mask_unit!r}")
    return mask_unit
