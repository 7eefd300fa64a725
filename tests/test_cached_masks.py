"""``cached_masks()`` (modules/cache.py): hard masks reused between forwards only while every
tensor they depend on keeps its version, never across a change, never with an autograd graph."""

import copy

import pytest
import torch
import torch.nn as nn
from _modules_zoo import example_input, mask_layer

import neurosurgeon as ns


def _fresh_output(layer, x):
    """What an uncached twin computes now."""
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        return twin(x)


@pytest.mark.parametrize("name", ["ContSparseLinear", "HardConcreteConv2d", "MagPruneGPTConv1D"])
@pytest.mark.parametrize("ablation", ["none", "zero_ablate", "complement_sampled"])
def test_reused_inside_the_context_and_equal_to_uncached(name, ablation):
    layer = mask_layer(name, ablation=ablation, key=3).eval()
    x = example_input(_suffix(name))
    with torch.no_grad():
        expected = layer(x)
        with ns.cached_masks():
            p1 = layer.masked_parameters()
            p2 = layer.masked_parameters()
            assert p1.weight is p2.weight and p1.weight_mask is p2.weight_mask
            assert torch.equal(layer(x), expected)
        # outside the context every call computes afresh
        assert layer.masked_parameters().weight is not layer.masked_parameters().weight


def _suffix(name):
    return next(s for s in ("Linear", "GPTConv1D", "Conv1d", "Conv2d") if name.endswith(s))


def _edits(layer):
    """Changes that must invalidate a cached mask, each through a different route."""
    p = layer.weight_mask_params if hasattr(layer, "weight_mask_params") else None

    def optimizer_step():
        opt = torch.optim.SGD([p], lr=10.0)
        p.grad = torch.randn_like(p)
        opt.step()

    def no_grad_copy():
        with torch.no_grad():
            p.copy_(-p)

    def reassign_data():
        p.data = -p.data

    def load_state_dict():
        sd = {k: v.clone() for k, v in layer.state_dict().items()}
        sd["weight_mask_params"] = -sd["weight_mask_params"]
        layer.load_state_dict(sd)

    def change_ablation():
        layer.ablation = "zero_ablate" if layer.ablation != "zero_ablate" else "none"

    return [optimizer_step, no_grad_copy, reassign_data, load_state_dict, change_ablation]


@pytest.mark.parametrize("edit", range(5), ids=["optimizer_step", "no_grad_copy", "reassign_data", "load_state_dict",
                                                "change_ablation"])
def test_every_versioned_change_invalidates(edit):
    layer = mask_layer("ContSparseLinear", key=4).eval()
    x = example_input("Linear")
    with ns.cached_masks():
        with torch.no_grad():
            before = layer(x)
        _edits(layer)[edit]()
        with torch.no_grad():
            after = layer(x)
        assert torch.equal(after, _fresh_output(layer, x))
        assert not torch.equal(after, before)


def test_force_resample_draws_anew_inside_the_context():
    layer = mask_layer("ContSparseLinear", ablation="randomly_sampled", key=4).eval()
    x = example_input("Linear")
    with ns.cached_masks(), torch.no_grad():
        y1 = layer(x)
        assert torch.equal(layer(x), y1)
        layer.force_resample = True
        y2 = layer(x)
        assert not torch.equal(y2, y1) and torch.equal(y2, _fresh_output(layer, x))


def test_magnitude_masks_follow_weight_and_hyperparameter_changes():
    layer = mask_layer("MagPruneLinear", key=0).eval()
    x = example_input("Linear")
    with ns.cached_masks(), torch.no_grad():
        y0 = layer(x)
        layer.prune_percentage = 0.2
        y1 = layer(x)
        assert torch.equal(y1, _fresh_output(layer, x)) and not torch.equal(y1, y0)
        layer.weight.mul_(-2)  # |w| order is kept but the values change
        assert torch.equal(layer(x), _fresh_output(layer, x))


def test_leaving_the_context_drops_entries():
    layer = mask_layer("ContSparseLinear", key=4).eval()
    x = example_input("Linear")
    with ns.cached_masks(), torch.no_grad():
        layer(x)
    layer.weight_mask_params.data.neg_()  # outside the context: no version bump, must still be seen
    with ns.cached_masks(), torch.no_grad():
        assert torch.equal(layer(x), _fresh_output(layer, x))


def test_nested_contexts_keep_entries_until_the_outermost_exits():
    layer = mask_layer("ContSparseLinear", key=4).eval()
    with ns.cached_masks(), torch.no_grad():
        w = layer.masked_parameters().weight
        with ns.cached_masks():
            assert layer.masked_parameters().weight is w
        assert layer.masked_parameters().weight is w


def test_results_with_an_autograd_graph_are_not_reused():
    layer = mask_layer("ContSparseLinear", key=4).eval()  # base weight trainable: W * h has a graph
    x = example_input("Linear")
    with ns.cached_masks():
        for _ in range(2):  # a reused graph would fail at the second backward
            layer(x).sum().backward()
        assert layer.weight.grad is not None
        assert layer.masked_parameters().weight is not layer.masked_parameters().weight


def test_training_masks_are_never_cached():
    layer = ns.HardConcreteLinear(6, 5, key=0)
    x = torch.randn(3, 6)
    with ns.cached_masks():
        y1, y2 = layer(x), layer(x)
    assert not torch.equal(y1, y2)  # fresh noise every step


def test_whole_model_evaluation_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ns.inject_masks(model, ["0", "2"], strategy="continuous_sparsification", key=0)
    model.eval()
    xs = [torch.randn(4, 6) for _ in range(3)]
    with torch.no_grad():
        expected = [model(x) for x in xs]
        with ns.cached_masks():
            got = [model(x) for x in xs]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
