"""set_ablation refuses an impossible complement_sampled up front: it names each layer whose
subnetwork keeps more units than lie outside it, with its counts and the remedy, and changes
no layer."""

import pytest
import torch
import torch.nn as nn

import neurosurgeon as ns


def model_with_one_dense_layer():
    """Layer "0" keeps 45 of its 60 weights (impossible); layer "2" keeps 6 of 30 (possible)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    layers = ns.inject_masks(model, nn.Linear, key=3)
    with torch.no_grad():
        for name, kept in (("0", 45), ("2", 6)):
            theta = layers[name].weight_mask_params
            theta.fill_(-1.0)
            theta.view(-1)[:kept] = 1.0
    return model.eval(), layers


def test_set_ablation_names_each_impossible_layer_its_counts_and_the_remedy_and_changes_nothing():
    model, layers = model_with_one_dense_layer()
    ns.set_ablation(model, "zero_ablate")
    with pytest.raises(ValueError, match=r"0\.weight keeps 45 of 60 units, 15 outside, may keep at most 30") as e:
        ns.set_ablation(model, "complement_sampled", force_resample=True)
    assert "2.weight" not in str(e.value)
    assert "sparser subnetwork" in str(e.value) and "randomly_sampled" in str(e.value)
    assert all(layer.ablation == "zero_ablate" and not layer.force_resample for layer in layers.values())


def test_set_ablation_to_complement_sampled_works_once_the_subnetwork_is_small_enough():
    model, layers = model_with_one_dense_layer()
    with torch.no_grad():
        layers["0"].weight_mask_params.view(-1)[20:] = -1.0  # 20 of 60 kept
    ns.set_ablation(model, "complement_sampled")
    assert all(layer.ablation == "complement_sampled" for layer in layers.values())
    model(torch.randn(2, 6))
