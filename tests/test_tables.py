"""The tables every axis is read from agree with each other: each layer kind has its module-side
row, each strategy's defaults pass its own check and give a layer of every kind, and the derived
views (supported layer types, mask classes) follow the rows."""

import pytest
import torch

import neurosurgeon as ns
import neurosurgeon.functional as F
from neurosurgeon.functional.layer import layer_settings
from neurosurgeon.modules._layer_types import LAYER_TYPES


def test_every_layer_kind_has_its_module_side_row_and_supported_type():
    assert set(LAYER_TYPES) == set(F.KINDS)
    assert sorted(ns.SUPPORTED_LAYERS.values()) == sorted(F.KINDS)
    for kind, layer_type in LAYER_TYPES.items():
        assert ns.SUPPORTED_LAYERS[layer_type.base] == kind == layer_type.kind


@pytest.mark.parametrize("strategy", sorted(F.STRATEGIES))
@pytest.mark.parametrize("kind", sorted(F.KINDS))
def test_each_strategy_row_and_kind_row_give_a_class_with_the_rows_defaults(strategy, kind):
    row = F.STRATEGIES[strategy]
    assert row.check(dict(row.hparams)) == dict(row.hparams)
    cls = ns.mask_class(strategy, kind)
    assert cls.__name__ == row.class_prefix + F.KINDS[kind].v0_name and getattr(ns, cls.__name__) is cls
    args = {"linear": (3, 2), "gpt_conv1d": (2, 3), "conv1d": (3, 2, 1), "conv2d": (3, 2, 1)}[kind]
    layer = cls(*args, key=0)
    assert layer.mask_hparams == dict(row.hparams) and layer.strategy == strategy and layer.layer_kind == kind
    assert layer.settings == layer_settings(strategy, kind, tuple(layer.weight.shape), **row.hparams)
    x = {"linear": torch.ones(1, 3), "gpt_conv1d": torch.ones(1, 3), "conv1d": torch.ones(1, 3, 4),
         "conv2d": torch.ones(1, 3, 4, 4)}[kind]
    assert layer(x).shape[0] == 1
