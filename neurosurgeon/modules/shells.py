"""The mask layer classes, derived from the strategy table x the layer-kind table.

For each strategy row there is one abstract class (``ContSparseLayer``: 0.1.0's name, the row's
``class_prefix`` + ``Layer``) whose hyper-parameters are validated properties, and for each layer
kind one concrete class (``ContSparseLinear``: the prefix + the kind's 0.1.0 name). Constructors
and ``from_layer`` take NeuroSurgeon 0.1.0's arguments in 0.1.0's order: the layer's own, then
the row's ``v0_positional``, then keyword-only the row's other hyper-parameters, ``unit_sizes``,
``key``, ``device`` and ``dtype``. A row added to the strategy table gets its classes here, with
no other change.
"""

from __future__ import annotations

from inspect import Parameter, Signature
from typing import Any

import torch.nn as nn

from ..functional.kinds import KINDS
from ..functional.strategies import STRATEGIES, strategy_row
from ._layer_types import LAYER_TYPES, REQUIRED, SUPPORTED_LAYERS, UnsupportedLayerError
from .mask_layer import MaskLayer

__all__ = ["strategy_class", "mask_class", "mask_class_for", "v0_classes"]

_MASK_OPTIONS = {"ablation": "none", "mask_unit": "weight", "mask_bias": False}
_KEYWORD_ONLY = {"unit_sizes": None, "key": None}
_FACTORY = {"device": None, "dtype": None}

_strategy_classes: dict[str, type[MaskLayer]] = {}
_mask_classes: dict[tuple[str, str], type[MaskLayer]] = {}


def _prefix(strategy: str) -> str:
    return strategy_row(strategy).class_prefix or "".join(part.capitalize() for part in strategy.split("_"))


def _mask_arguments(strategy: str) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """(positional, keyword-only) mask arguments of ``strategy``'s constructors, with defaults."""
    row = strategy_row(strategy)
    defaults = {**_MASK_OPTIONS, "mask_unit": row.default_unit, **row.hparams}
    positional = [(name, defaults[name]) for name in row.v0_positional]
    keyword = [(n, v) for n, v in defaults.items() if n not in row.v0_positional] + list(_KEYWORD_ONLY.items())
    return positional, keyword


def _signature(first: list[tuple[str, Any]], positional, keyword) -> Signature:
    params = [Parameter(n, Parameter.POSITIONAL_OR_KEYWORD, default=Parameter.empty if v is REQUIRED else v)
              for n, v in [*first, *positional]]
    params += [Parameter(n, Parameter.KEYWORD_ONLY, default=v) for n, v in keyword]
    return Signature(params)


def _bind(sig: Signature, owner: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{owner}(): {e}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _wrap(cls: type[MaskLayer], layer: nn.Module, key=None, **mask_args) -> MaskLayer:
    """A ``cls`` mask layer sharing ``layer``'s weight and bias Parameters."""
    if not isinstance(layer, cls._layer.base):
        raise UnsupportedLayerError(f"{cls.__name__}.from_layer needs a {cls._layer.base.__name__}, got {type(layer).__name__}")
    if hasattr(layer.weight, "device_mesh"):  # theta would be a plain tensor beside a sharded weight
        raise ValueError(f"{type(layer).__name__} is already sharded (DTensor weight): inject masks first, then fully_shard")
    return cls(**cls._layer.config_from(layer), **mask_args, key=key, _base=layer)


def _hparam_property(name: str) -> property:
    def get(self):
        return self._settings_.hparams[name]

    def set_(self, value):
        self._settle(**{name: value})

    return property(get, set_, doc=f"The hyper-parameter ``{name}``; setting it validates it.")


def strategy_class(strategy: str) -> type[MaskLayer]:
    """The abstract mask layer class of ``strategy`` (``ContSparseLayer``, ...)."""
    if strategy not in _strategy_classes:
        row = strategy_row(strategy)
        positional, keyword = _mask_arguments(strategy)
        from_layer_sig = _signature([("layer", REQUIRED)], positional, keyword)

        def from_layer(cls, *args, **kwargs):
            """Wrap an existing layer; the mask layer shares its ``weight`` and ``bias`` Parameters."""
            given = _bind(from_layer_sig, f"{cls.__name__}.from_layer", args, kwargs)
            layer = given.pop("layer")
            if getattr(cls, "_layer", None) is None:  # called on the abstract class: pick by the layer's type
                if type(layer) not in SUPPORTED_LAYERS:
                    raise UnsupportedLayerError(f"{cls.__name__}.from_layer cannot wrap a {type(layer).__name__}; "
                                                f"supported: {[t.__name__ for t in SUPPORTED_LAYERS]}")
                cls = mask_class(strategy, SUPPORTED_LAYERS[type(layer)])
            return _wrap(cls, layer, **given)

        from_layer.__signature__ = Signature([Parameter("cls", Parameter.POSITIONAL_OR_KEYWORD),
                                              *from_layer_sig.parameters.values()])
        namespace = {name: _hparam_property(name) for name in row.hparams}
        namespace.update(_strategy=strategy, _layer=None, from_layer=classmethod(from_layer), __module__=__package__,
                         __doc__=f"Abstract {strategy.replace('_', ' ')} mask layer: see :class:`MaskLayer` and "
                                 f"``neurosurgeon.functional.STRATEGIES[{strategy!r}]`` for its hyper-parameters "
                                 f"{dict(row.hparams)}.")
        _strategy_classes[strategy] = type(_prefix(strategy) + "Layer", (MaskLayer,), namespace)
    return _strategy_classes[strategy]


def mask_class(strategy: str, kind: str) -> type[MaskLayer]:
    """The mask layer class of ``strategy`` wrapping a ``kind`` layer (``ContSparseLinear``, ...)."""
    if (strategy, kind) not in _mask_classes:
        base_cls, layer_type = strategy_class(strategy), LAYER_TYPES[kind]
        positional, keyword = _mask_arguments(strategy)
        sig = _signature(list(layer_type.arguments), positional, [*keyword, *_FACTORY.items()])
        layer_names = [n for n, _ in layer_type.arguments]

        def __init__(self, *args, _base: nn.Module | None = None, **kwargs):
            given = _bind(sig, type(self).__name__, args, kwargs)
            layer_args = {n: given.pop(n) for n in layer_names}
            MaskLayer.__init__(self, layer_args=layer_args, base=_base, **given)

        __init__.__signature__ = Signature([Parameter("self", Parameter.POSITIONAL_OR_KEYWORD), *sig.parameters.values()])
        name = _prefix(strategy) + KINDS[kind].v0_name
        _mask_classes[strategy, kind] = type(name, (base_cls,), {
            "_layer": layer_type, "__init__": __init__, "__signature__": sig, "__module__": __package__,
            "__doc__": f"``{layer_type.base.__module__}.{layer_type.base.__qualname__}`` with a "
                       f"{strategy.replace('_', ' ')} mask (see :class:`MaskLayer`)."})
    return _mask_classes[strategy, kind]


def mask_class_for(strategy: str, layer_type: type) -> type[MaskLayer]:
    """The mask layer class of ``strategy`` for a base layer of type ``layer_type``."""
    return mask_class(strategy, SUPPORTED_LAYERS[layer_type])


def v0_classes() -> dict[str, type[MaskLayer]]:
    """Every class of the strategies in the table now, abstract and concrete, by name."""
    out = {}
    for strategy in STRATEGIES:
        out[strategy_class(strategy).__name__] = strategy_class(strategy)
        for kind in KINDS:
            out[mask_class(strategy, kind).__name__] = mask_class(strategy, kind)
    return out
