"""``cached_masks()``: inside the block each layer computes its masked weight once; outside it,
every forward recomputes, so any edit is seen; leaving the block forgets everything."""

import pytest
import torch
from _modules_zoo import example_input, mask_layer, suffix_of

import neurosurgeon as ns


def _reference(layer, x):
    """What the layer computes from its tensors as they are now, with nothing cached."""
    p = ns.functional.mask_parameters(layer.weight, layer.bias, *layer.mask_tensors(),
                                      layer.mask_key if layer.ablation not in ("none", "zero_ablate") else None,
                                      strategy=layer.strategy, kind=layer.layer_kind, hard=True, ablation=layer.ablation,
                                      mask_unit=layer.mask_unit, **layer.mask_hparams)
    return layer._layer.forward(layer, x, p.weight, p.bias)


@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteConv2d", "MagPruneGPTConv1D"])
@pytest.mark.parametrize("ablation", ["none", "zero_ablate", "complement_sampled"])
def test_computed_once_inside_the_block_and_equal_to_uncached(name, ablation):
    layer = mask_layer(name, ablation=ablation, key=3).eval()
    x = example_input(suffix_of(name))
    with torch.no_grad():
        expected = layer(x)
        with ns.cached_masks():
            p1 = layer.masked_parameters()
            p2 = layer.masked_parameters()
            assert p1.weight is p2.weight
            assert torch.equal(layer(x), expected)
        assert layer.masked_parameters().weight is not layer.masked_parameters().weight


def _edit_theta(layer):
    with torch.no_grad():
        layer.weight_mask_params.neg_()


def _edit_data(layer):
    layer.weight_mask_params.data = -layer.weight_mask_params.data


def _edit_weight_data(layer):
    layer.weight.data.mul_(-2.0)


@pytest.mark.parametrize("edit", [_edit_theta, _edit_data, _edit_weight_data])
def test_outside_the_block_every_edit_is_seen(edit):
    layer = mask_layer("ContSparseLinear", key=4).eval()
    x = example_input("Linear")
    with torch.no_grad():
        before = layer(x)
        edit(layer)
        after = layer(x)
    assert not torch.equal(after, before)
    assert torch.equal(after, _reference(layer, x))


def test_leaving_the_block_forgets_and_nested_blocks_keep_until_the_outermost_exits():
    layer = mask_layer("HardConcreteLinear", key=4).eval()
    x = example_input("Linear")
    with torch.no_grad(), ns.cached_masks():
        w = layer.masked_parameters().weight
        with ns.cached_masks():
            assert layer.masked_parameters().weight is w
        assert layer.masked_parameters().weight is w  # the inner exit kept it
    _edit_theta(layer)
    with torch.no_grad(), ns.cached_masks():
        assert torch.equal(layer(x), _reference(layer, x))  # a new block sees the edit


def test_a_settings_change_inside_the_block_is_seen():
    layer = mask_layer("ContSparseLinear", key=4).eval()
    x = example_input("Linear")
    with torch.no_grad(), ns.cached_masks():
        layer(x)
        layer.ablation = "zero_ablate"
        assert torch.equal(layer(x), _reference(layer, x))
        layer.ablation = "randomly_sampled"
        first = layer(x)
        layer.force_resample = True
        assert not torch.equal(layer(x), first) and torch.equal(layer(x), _reference(layer, x))  # new draw seen
        layer.use_masks = False
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_training_forwards_and_graphs_are_never_reused():
    layer = mask_layer("ContSparseLinear", key=4)
    x = example_input("Linear")
    with ns.cached_masks():
        assert layer.masked_parameters().weight is not layer.masked_parameters().weight  # training: soft
        layer.eval()
        layer.weight.requires_grad_(True)
        p1, p2 = layer.masked_parameters(), layer.masked_parameters()
        assert p1.weight.grad_fn is not None and p1.weight is not p2.weight
        for _ in range(2):  # two backward passes through two forwards: no graph was shared
            layer(x).sum().backward()
