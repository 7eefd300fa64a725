"""``cached_masks()``: inside the block each layer computes its masked weight once; outside it,
every forward recomputes, so any edit is seen; leaving the block forgets everything."""

import pytest
import torch
from _modules_zoo import example_input, reference

import neurosurgeon as ns


def _output_or_error(layer, x):
    """The layer's output, or the ValueError it raised; and the same from the reference."""
    results = []
    for run in (lambda: layer(x), lambda: reference(layer, x)[0]):
        try:
            with torch.no_grad():
                results.append(run())
        except ValueError as e:
            results.append(e)
    return results


@pytest.mark.parametrize("strategy,kind", [("continuous_sparsification", "linear"), ("hard_concrete", "conv2d"),
                                           ("magnitude_pruning", "gpt_conv1d")])
@pytest.mark.parametrize("ablation", ["none", "zero_ablate", "complement_sampled"])
def test_computed_once_inside_the_block_and_equal_to_uncached(make_layer, strategy, kind, ablation):
    layer = make_layer(strategy, kind, ablation=ablation, key=3).eval()
    x = example_input(layer)
    with torch.no_grad():
        expected = layer(x)
        with ns.cached_masks():
            p1 = layer.masked_parameters()
            p2 = layer.masked_parameters()
            assert p1.weight is p2.weight
            assert torch.equal(layer(x), expected)
        assert layer.masked_parameters().weight is not layer.masked_parameters().weight


@pytest.mark.parametrize("strategy,kind", [("continuous_sparsification", "linear"), ("hard_concrete", "gpt_conv1d")])
@pytest.mark.parametrize("ablation", ["none", "randomly_sampled", "complement_sampled"])
def test_outside_the_block_every_edit_of_theta_or_weight_is_seen(make_layer, strategy, kind, ablation):
    layer = make_layer(strategy, kind, ablation=ablation, mask_bias=True, key=1).eval()
    x = example_input(layer)
    theta, bias_theta = layer.weight_mask_params, layer.bias_mask_params

    def check():
        y, want = _output_or_error(layer, x)
        if isinstance(want, ValueError):  # e.g. a subnetwork grown past half the layer for complement sampling
            assert isinstance(y, ValueError)
            return None
        assert torch.equal(y, want)
        return y

    first = check()
    layer.train()
    layer.ablation = "none"
    layer(x).square().sum().backward()
    torch.optim.SGD([theta, bias_theta], lr=10.0).step()  # large steps flip signs of theta
    layer.ablation = ablation
    layer.eval()
    check()
    with torch.no_grad():
        theta.neg_()
    negated = check()
    if ablation == "none":
        assert not torch.equal(negated, first)
    theta.data[0].fill_(3.0)  # .data edits bump no version counter
    check()
    theta.data = -theta.data
    check()
    bias_theta.data.neg_()
    before = check()
    layer.weight.data.mul_(-2.0)
    after = check()
    if before is not None:
        assert not torch.equal(after, before)


@pytest.mark.parametrize("ablation", ["none", "zero_ablate", "complement_sampled"])
def test_outside_the_block_magnitude_masks_follow_every_weight_edit(make_layer, ablation):
    """A threshold that still splits off exactly round(p * n) entries after an edit (here: the
    largest and smallest |w| swapped through ``.data``) must still give the edited weight's mask."""
    layer = make_layer("magnitude_pruning", "linear", ablation=ablation, mask_bias=True, key=1).eval()
    x = example_input(layer)
    with torch.no_grad():
        layer(x)
        w = layer.weight.data.view(-1)
        big, small = int(w.abs().argmax()), int(w.abs().argmin())
        w[big], w[small] = w[small].clone(), w[big].clone()
        assert torch.equal(layer(x), reference(layer, x)[0])
        if ablation == "none":
            assert layer.weight_mask.view(-1)[small] == 1 and layer.weight_mask.view(-1)[big] == 0
        w.mul_(torch.linspace(0.5, 3.0, w.numel()))  # moves entries across the threshold
        assert torch.equal(layer(x), reference(layer, x)[0])
        layer.prune_percentage = 0.8
        assert torch.equal(layer(x), reference(layer, x)[0])


def test_leaving_the_block_forgets_and_nested_blocks_keep_until_the_outermost_exits(make_layer):
    layer = make_layer("hard_concrete", "linear", key=4).eval()
    x = example_input(layer)
    with torch.no_grad(), ns.cached_masks():
        w = layer.masked_parameters().weight
        with ns.cached_masks():
            assert layer.masked_parameters().weight is w
        assert layer.masked_parameters().weight is w  # the inner exit kept it
    with torch.no_grad():
        layer.weight_mask_params.neg_()
    with torch.no_grad(), ns.cached_masks():
        assert torch.equal(layer(x), reference(layer, x)[0])  # a new block sees the edit


def test_a_settings_change_inside_the_block_is_seen(make_layer):
    layer = make_layer("continuous_sparsification", "linear", key=4).eval()
    x = example_input(layer)
    with torch.no_grad(), ns.cached_masks():
        layer(x)
        layer.ablation = "zero_ablate"
        assert torch.equal(layer(x), reference(layer, x)[0])
        layer.ablation = "randomly_sampled"
        first = layer(x)
        layer.force_resample = True
        assert not torch.equal(layer(x), first) and torch.equal(layer(x), reference(layer, x)[0])  # new draw seen
        layer.use_masks = False
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_training_forwards_and_graphs_are_never_reused(make_layer):
    layer = make_layer("continuous_sparsification", "linear", key=4)
    x = example_input(layer)
    with ns.cached_masks():
        assert layer.masked_parameters().weight is not layer.masked_parameters().weight  # training: soft
        layer.eval()
        layer.weight.requires_grad_(True)
        p1, p2 = layer.masked_parameters(), layer.masked_parameters()
        assert p1.weight.grad_fn is not None and p1.weight is not p2.weight
        for _ in range(2):  # two backward passes through two forwards: no graph was shared
            layer(x).square().sum().backward()
