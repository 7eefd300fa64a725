"""Whole-model surgery on real architectures: GPT-2 (Conv1D), BERT (Linear), ViT (Linear +
patch Conv2d), ResNet (Conv2d + batch norm) and a plain torch Conv1d net."""

import copy

import pytest
import torch
from model_zoo import ZOO, build

import neurosurgeon as ns
from neurosurgeon.modules import MaskLayer

ARCHS = list(ZOO)


def _masked(name, **kwargs):
    model = build(name)
    reference = copy.deepcopy(model).eval()
    layers = ns.inject_masks(model, ZOO[name].targets, key=7, **kwargs)
    return model, reference, layers


def _randomise(layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers.values():
            layer.weight_mask_params.copy_(torch.randn(layer.weight_mask_params.shape, generator=g))


@pytest.mark.parametrize("arch", ARCHS)
def test_inject_replaces_every_target_with_a_mask_layer_of_its_type(arch):
    model, _, layers = _masked(arch)
    assert layers and all(isinstance(m, MaskLayer) for m in layers.values())
    assert set(ns.mask_layers(model)) == set(layers)
    kinds = {type(m)._layer.base for m in layers.values()}
    assert kinds == set(ZOO[arch].layer_types)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("mask_params") for n in trainable)


@pytest.mark.parametrize("arch", ARCHS)
def test_one_training_step_decreases_the_loss(arch):
    model, _, _ = _masked(arch)
    batch = ZOO[arch].batch()
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    before = ZOO[arch].loss(model, batch)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = ZOO[arch].loss(model, batch)
    assert after < before


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_with_all_ones_masks_equals_the_unmasked_model(arch):
    model, reference, layers = _masked(arch)
    with torch.no_grad():
        for layer in layers.values():
            layer.weight_mask_params.fill_(1.0)
    model.eval()
    batch = ZOO[arch].batch()
    with torch.no_grad():
        assert torch.equal(ZOO[arch].out(model, batch), ZOO[arch].out(reference, batch))


@pytest.mark.parametrize("arch", ARCHS)
def test_masks_off_equals_the_unmasked_model(arch):
    model, reference, layers = _masked(arch)
    _randomise(layers)
    ns.set_use_masks(model, False)
    batch = ZOO[arch].batch()
    with torch.no_grad():
        assert torch.equal(ZOO[arch].out(model.eval(), batch), ZOO[arch].out(reference, batch))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ablation", ["none", "zero_ablate"])
def test_bake_reproduces_the_masked_model_exactly(arch, ablation):
    model, reference, layers = _masked(arch)
    _randomise(layers)
    model.eval()
    ns.set_ablation(model, ablation)
    batch = ZOO[arch].batch()
    baked = ns.bake(model)
    assert not ns.mask_layers(baked)
    assert {type(m) for m in baked.modules()} <= {type(m) for m in reference.modules()}
    with torch.no_grad():
        assert torch.equal(ZOO[arch].out(baked, batch), ZOO[arch].out(model, batch))
    assert isinstance(ns.mask_layers(model)[next(iter(layers))], MaskLayer)  # original untouched


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trips_mask_parameters_keys_and_outputs(arch, tmp_path):
    model, _, layers = _masked(arch)
    _randomise(layers)
    path = tmp_path / "masks.safetensors"
    ns.save_masks(model, path)
    other = build(arch)
    ns.inject_masks(other, ZOO[arch].targets, key=99)
    ns.load_masks(other, path)
    saved, loaded = ns.mask_state(model), ns.mask_state(other)
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    batch = ZOO[arch].batch()
    for ablation in ("none", "randomly_sampled"):
        ns.set_ablation(model, ablation)
        ns.set_ablation(other, ablation)
        with torch.no_grad():
            assert torch.equal(ZOO[arch].out(other.eval(), batch), ZOO[arch].out(model.eval(), batch))
