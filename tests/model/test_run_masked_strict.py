"""run_masked refuses a state it would misread: a name that is no mask layer's weight or bias (a
typo would run that layer unmasked) and, unless strict=False, a state missing a layer's tensors."""

import pytest
import torch
import torch.nn as nn

import neurosurgeon as ns
from neurosurgeon.functional import random as nr


def three_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 3))
    ns.inject_masks(model, nn.Linear, key=0, mask_init_value=-0.5)
    with torch.no_grad():
        for layer in ns.mask_layers(model).values():
            layer.weight_mask_params.normal_()
    return model.eval()


def test_a_misspelt_name_raises_naming_it_and_some_known_names():
    model = three_layers()
    state = ns.masked_weights(model, None)
    state["0.wieght"] = state.pop("0.weight")
    with pytest.raises(ValueError, match=r"\['0\.wieght'\] that are no mask layer's weight or bias; known: "
                                         r"\['0\.weight', '0\.bias', '2\.weight'"):
        ns.run_masked(model, state, torch.randn(2, 6), strict=False)  # even when partial states are allowed


def test_a_state_missing_a_layer_raises_naming_the_missing_tensors():
    model = three_layers()
    state = ns.masked_weights(model, None)
    partial = {n: t for n, t in state.items() if not n.startswith("4.")}
    with pytest.raises(ValueError, match=r"lacks 2 mask-layer tensor\(s\): \['4\.weight', '4\.bias'\].*strict=False"):
        ns.run_masked(model, partial, torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"\['0\.bias'\]"):  # a bias the layer has is required too
        ns.run_masked(model, {n: t for n, t in state.items() if n != "0.bias"}, torch.randn(2, 6))


def test_strict_false_runs_the_missing_layers_with_their_base_weights():
    model = three_layers()
    x = torch.randn(5, 6)
    partial = {n: t for n, t in ns.masked_weights(model, None).items() if n.startswith("0.")}
    got = ns.run_masked(model, partial, x, strict=False)
    ns.set_use_masks(model, False, ["2", "4"])
    assert torch.equal(got, model(x))


def test_the_full_state_runs_and_strict_is_run_maskeds_own_keyword_only_bool():
    model = three_layers()
    x = torch.randn(5, 6)
    ns.set_ablation(model, "randomly_sampled")
    k = nr.key(7)
    for i, layer in enumerate(ns.mask_layers(model).values()):
        layer.mask_key.copy_(nr.fold_in(k, i))
    out = ns.run_masked(model, ns.masked_weights(model, k, ablation="randomly_sampled"), x)
    assert torch.equal(out, model(x))
    with pytest.raises(TypeError, match="strict must be a bool"):
        ns.run_masked(model, ns.masked_weights(model, None), x, strict="no")


def test_strict_is_not_passed_to_the_model():
    seen = {}

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x, **options):
            seen.update(options)
            return self.lin(x)

    model = Scaled()
    ns.inject_masks(model, "lin", key=0)
    ns.run_masked(model, ns.masked_weights(model, None), torch.randn(3, 4), strict=True, scale=2)
    assert seen == {"scale": 2}
