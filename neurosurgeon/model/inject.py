"""Injecting mask layers into a model: the entry point of whole-model surgery."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..functional import random as nr
from ..functional._checks import check_bool, check_key
from ..functional.ablation import ablation_row
from ..functional.strategies import check_unit, strategy_row
from ..modules import MaskLayer, mask_class_for
from .freeze import _GRAD, set_freeze_base
from ._layers import set_module
from .select import _glob_regex, resolve_targets

__all__ = ["inject_masks", "model_key", "layer_hparams"]

def model_key(key: torch.Tensor | int | None) -> torch.Tensor:
    """A model-level PRNG key from a key, an int seed, or (None) torch's global RNG.

    None draws the seed from ``torch``'s global generator, like torch's own initialisers, so
    ``torch.manual_seed`` makes an unkeyed injection reproducible.
    """
    if key is None:
        return nr.key(int(torch.randint(0, 2**62, (), dtype=torch.int64).item()))
    if isinstance(key, int) and not isinstance(key, bool):
        return nr.key(key)
    return check_key(key).detach().cpu()


def layer_hparams(strategy: str) -> list[str]:
    """The hyper-parameters the mask layers of ``strategy`` take (the row's, by their layer names)."""
    return list(strategy_row(strategy).hparams)


def inject_masks(
    model: nn.Module,
    targets,
    *,
    strategy: str = "continuous_sparsification",
    key: torch.Tensor | int | None = None,
    freeze_base: bool = True,
    ablation: str = "none",
    mask_unit: str = "weight",
    unit_sizes: dict[str, int] | None = None,
    mask_bias: bool = False,
    **hparams: Any,
) -> dict[str, MaskLayer]:
    """Replace the target layers of ``model``, in place, by mask layers that share their weights.

    Each target becomes the strategy's mask layer built with ``from_layer`` (it holds the very
    same ``weight``/``bias`` Parameters, so weights tied to other modules stay tied). Two
    targets sharing one weight Parameter also share one mask: the same mask parameters and
    key, so a tie survives training and :func:`bake`. A module registered at several paths
    is replaced by one mask layer at all of them.

    Keys: target ``i`` (its position in :func:`mask_layers` after injection, i.e. in
    ``named_modules`` order) gets ``fold_in(key, i)``, so one seed reproduces every mask draw.

    Args:
        model: a ``transformers`` or plain torch model, modified in place.
        targets: exact module names, glob patterns (``"transformer.h.*.mlp.c_fc"``, ``*`` within
            one name part, ``**`` across parts), layer types (``nn.Linear``, transformers
            ``Conv1D``, ``nn.Conv1d``, ``nn.Conv2d``), or a list mixing these; or a dict
            ``{name or pattern: (mask_unit, unit_sizes)}`` giving each target its own unit,
            such as :func:`neurosurgeon.attention_heads` returns.
        strategy: ``continuous_sparsification`` (Savarese et al. 2020), ``hard_concrete``
            (Louizos et al. 2018) or ``magnitude_pruning`` (Frankle & Carbin 2019).
        key: model PRNG key ``(2,)`` or int seed; None draws one from torch's global RNG.
        freeze_base: freeze every base parameter and keep base dropout/batch-norm in eval mode
            while the masks train (:func:`set_freeze_base`).
        ablation, mask_unit, unit_sizes: as for the mask layers (:class:`~neurosurgeon.MaskLayer`);
            ``mask_unit`` is ``weight``, ``neuron`` or an einops pattern; magnitude pruning
            only has ``mask_unit="weight"``.
        mask_bias: also mask the bias of every target that has one.
        **hparams: the strategy's hyper-parameters: ``mask_init_value``, ``temperature``
            (continuous sparsification); ``mask_init_percentage``, ``left_stretch``,
            ``right_stretch``, ``temperature`` (hard concrete); ``prune_percentage``
            (magnitude pruning).

    Returns:
        dict name -> the new mask layers (every path for a module registered twice).

    Raises:
        ValueError: a target matches nothing or is already masked; an invalid option.
        TypeError: a target layer of an unsupported type; an unknown hyper-parameter.

    Example:
        >>> import torch.nn as nn, neurosurgeon as ns
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> layers = ns.inject_masks(net, nn.Linear, key=0)
        >>> sorted(layers)
        ['0', '2']
    """
    row = strategy_row(strategy)
    ablation_row(ablation)
    units = _units_by_target(targets, mask_unit, unit_sizes)
    check_bool("mask_bias", mask_bias)
    check_bool("freeze_base", freeze_base)
    for unit in units.values():  # before any layer is replaced
        check_unit(strategy, unit[0])
    unknown = sorted(set(hparams) - set(row.hparams))
    if unknown:
        raise TypeError(f"unknown hyper-parameter(s) {unknown} for strategy {strategy!r}; valid: {list(row.hparams)}")
    root_key = model_key(key)
    paths = resolve_targets(model, list(targets) if isinstance(targets, dict) else targets)

    # Index every future mask layer as mask_layers(model) will list it after injection.
    order = []
    for name, m in model.named_modules():
        if isinstance(m, MaskLayer) or name in paths:
            order.append(id(m))
    index = {ident: i for i, ident in enumerate(order)}

    made: dict[int, MaskLayer] = {}
    by_weight: dict[int, MaskLayer] = {}
    out: dict[str, MaskLayer] = {}
    common = dict(ablation=ablation, **hparams)
    for path in paths:
        base = model.get_submodule(path)
        if id(base) not in made:
            layer_key = nr.fold_in(root_key, index[id(base)]).to(base.weight.device)
            has_bias = getattr(base, "bias", None) is not None
            unit = dict(zip(("mask_unit", "unit_sizes"), _unit_of(units, path)))
            masked = mask_class_for(strategy, type(base)).from_layer(base, key=layer_key, mask_bias=mask_bias and has_bias,
                                                                     **common, **unit)
            masked.label = path  # errors from its forward name it by its place in the model
            _carry_freeze_record(base, masked)
            tied = by_weight.get(id(base.weight))
            if tied is not None and type(tied) is type(masked):
                _tie_masks(masked, tied)
            by_weight.setdefault(id(base.weight), masked)
            made[id(base)] = masked
        masked = made[id(base)]
        masked.train(base.training)
        set_module(model, path, masked)
        out[path] = masked
    if freeze_base:
        set_freeze_base(model, True)
    return out


def _units_by_target(targets, mask_unit, unit_sizes) -> dict:
    """{target: (mask_unit, unit_sizes)}: per target from a dict of targets, else one for all."""
    if not isinstance(targets, dict):
        return {None: (mask_unit, unit_sizes)}
    out = {}
    for name, unit in targets.items():
        if isinstance(unit, str):
            unit = (unit, None)
        if not (isinstance(unit, tuple) and len(unit) == 2):
            raise TypeError(f"targets[{name!r}] must be a mask_unit or a (mask_unit, unit_sizes) pair, got {unit!r}")
        out[name] = unit
    return out


def _unit_of(units: dict, path: str):
    """The (mask_unit, unit_sizes) of the target that selected ``path``."""
    if None in units:
        return units[None]
    if path in units:
        return units[path]
    for pattern, unit in units.items():
        if isinstance(pattern, str) and _glob_regex(pattern).match(path):
            return unit
    raise ValueError(f"no mask unit given for {path!r}")


def _carry_freeze_record(base: nn.Module, masked: MaskLayer) -> None:
    """Keep the ``requires_grad`` a frozen base layer had, so unfreezing restores it."""
    record = getattr(base, _GRAD, None)
    if record is not None:
        setattr(masked, _GRAD, dict(record))


def _tie_masks(layer: MaskLayer, owner: MaskLayer) -> None:
    """Make ``layer`` use ``owner``'s mask parameters and key (their base weight is shared)."""
    if getattr(owner, "weight_mask_params", None) is not None and owner.weight_mask_params.shape == layer.weight_mask_params.shape:
        layer.weight_mask_params = owner.weight_mask_params
    if layer.bias is not None and layer.bias is owner.bias and getattr(owner, "bias_mask_params", None) is not None:
        layer.bias_mask_params = owner.bias_mask_params
    layer.mask_key = owner.mask_key
    layer.noise_step = owner.noise_step

