"""model_masks: every mask layer's masks for one key, layer i drawing from fold_in(key, i); vmap
over keys equals a loop, and both equal what the layers themselves apply. masked_weights is its
weights and biases; masked_state is masked_weights' deprecated alias."""

import pytest
import torch
import torch.nn as nn
from torch.func import vmap

import neurosurgeon as ns
from neurosurgeon.functional import MaskedParameters
from neurosurgeon.functional import random as nr


def small_model(**kwargs):
    """Three mask layers, each keeping a third of its units (complement sampling is possible)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    layers = ns.inject_masks(model, nn.Linear, key=5, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            for name in ("weight_mask_params", "bias_mask_params"):
                theta = getattr(layer, name, None)
                if theta is not None:  # every third unit kept, at random magnitudes
                    u = torch.rand(theta.shape, generator=g)
                    third = (torch.arange(theta.numel()) % 3 == 0).view(theta.shape)
                    theta.copy_(torch.where(third, u + 0.1, -u))
    return model.eval(), layers


KWARGS = [{}, {"mask_bias": True}, {"mask_unit": "neuron"}, {"strategy": "hard_concrete", "mask_bias": True}]


@pytest.mark.parametrize("kwargs", KWARGS)
def test_vmapped_model_masks_equal_a_loop_over_the_keys_bitwise(kwargs):
    model, layers = small_model(**kwargs)
    keys = nr.split(nr.key(3), 6)
    batched = vmap(lambda k: ns.model_masks(model, k, ablation="complement_sampled"))(keys)
    assert list(batched) == list(layers) and all(isinstance(p, MaskedParameters) for p in batched.values())
    for i, k in enumerate(keys):
        single = ns.model_masks(model, k, ablation="complement_sampled")
        for name, p in single.items():
            for got, want in zip(batched[name], p):
                assert (got is None) == (want is None)
                if want is not None:
                    assert torch.equal(got[i], want), name
    assert not torch.equal(batched["0"].weight_mask[0], batched["0"].weight_mask[1])  # the keys differ


@pytest.mark.parametrize("kwargs", KWARGS)
def test_layer_i_of_model_masks_applies_what_the_layer_applies_with_key_fold_in_k_i(kwargs):
    model, layers = small_model(**kwargs)
    x = torch.randn(4, 6)
    for k in nr.split(nr.key(9), 3):
        expected = ns.model_masks(model, k, ablation="complement_sampled")
        for i, layer in enumerate(layers.values()):
            layer.mask_key.copy_(nr.fold_in(k, i))
            layer.ablation = "complement_sampled"
        model(x)
        for name, layer in layers.items():
            assert torch.equal(layer.weight_mask, expected[name].weight_mask), name
            if layer.mask_bias:
                assert torch.equal(layer.bias_mask, expected[name].bias_mask), name
            assert torch.equal(layer.masked_parameters().weight, expected[name].weight), name


def test_masked_weights_are_the_weights_and_biases_of_model_masks():
    model, _ = small_model(mask_bias=True)
    k = nr.key(2)
    masks = ns.model_masks(model, k, ablation="randomly_sampled")
    weights = ns.masked_weights(model, k, ablation="randomly_sampled")
    expected = {f"{name}.{attr}": getattr(p, attr) for name, p in masks.items() for attr in ("weight", "bias")}
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[n], expected[n]) for n in expected)


def test_model_masks_rejects_a_params_typo_by_name():
    model, _ = small_model()
    with pytest.raises(ValueError, match=r"0\.weight_mask_param'\].*known"):
        ns.model_masks(model, None, params={"0.weight_mask_param": torch.zeros(16, 6)})


def test_masked_state_warns_that_it_is_deprecated_and_returns_masked_weights():
    model, _ = small_model()
    k = nr.key(4)
    with pytest.warns(DeprecationWarning, match=r"masked_state is deprecated.*use neurosurgeon\.masked_weights"):
        old = ns.masked_state(model, k, ablation="complement_sampled")
    new = ns.masked_weights(model, k, ablation="complement_sampled")
    assert old.keys() == new.keys() and all(torch.equal(old[n], new[n]) for n in new)
    assert "masked_weights" in ns.__all__ and "model_masks" in ns.__all__ and "mask_state" in ns.__all__
