"""Analysis at model level: ablation switches, masks on/off, subnetworks, safetensors, bake."""

import copy

import pytest
import torch
import torch.nn as nn
from model_zoo import ZOO, build
from safetensors.torch import load_file

import neurosurgeon as ns
from neurosurgeon import functional as F


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def masked_mlp(*, sparse=False, **kwargs):
    """An MLP with random masks; ``sparse``: each subnetwork is a third of its layer, so that
    complement sampling is possible."""
    model = mlp()
    layers = ns.inject_masks(model, nn.Linear, key=0, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in layers.values():
            for name in ("weight_mask_params", "bias_mask_params"):
                p = getattr(m, name, None)
                if p is not None:
                    p.copy_(torch.randn(p.shape, generator=g))
                    if sparse:
                        p.copy_(-p.abs())
                        p.view(-1)[: p.numel() // 3] *= -1
    return model.eval(), layers


@pytest.mark.parametrize("ablation", ["zero_ablate", "random_ablate", "randomly_sampled", "complement_sampled"])
def test_set_ablation_switches_every_layer_and_changes_the_output(ablation):
    model, layers = masked_mlp(mask_unit="neuron", sparse=True)
    x = torch.randn(5, 6)
    base = model(x)
    ns.set_ablation(model, ablation)
    assert all(m.ablation == ablation for m in layers.values())
    assert not torch.equal(model(x), base)
    ns.set_ablation(model, "none")
    assert torch.equal(model(x), base)


def test_force_resample_draws_new_random_masks_once():
    model, layers = masked_mlp()
    x = torch.randn(5, 6)
    ns.set_ablation(model, "randomly_sampled")
    first = model(x)
    assert torch.equal(model(x), first)  # drawn once, reused
    ns.set_ablation(model, "randomly_sampled", force_resample=True)
    second = model(x)
    assert not torch.equal(second, first)
    assert not any(m.force_resample for m in layers.values())
    assert torch.equal(model(x), second)


def test_ablating_while_training_is_an_error():
    model, _ = masked_mlp()
    ns.set_ablation(model, "zero_ablate")
    with pytest.raises(ValueError, match="cannot ablate while training"):
        model.train()(torch.randn(2, 6))
    with pytest.raises(ValueError, match="ablation"):
        ns.set_ablation(model, "zeros")


def test_set_use_masks_for_named_layers_and_patterns():
    model, layers = masked_mlp()
    ns.set_use_masks(model, False, ["2"])
    assert layers["0"].use_masks and not layers["2"].use_masks
    ns.set_use_masks(model, False)
    assert not layers["0"].use_masks
    ns.set_use_masks(model, True, "*")
    assert all(m.use_masks for m in layers.values())
    with pytest.raises(ValueError, match="'5'"):
        ns.set_use_masks(model, False, ["5"])


@pytest.mark.parametrize("strategy", ["continuous_sparsification", "hard_concrete", "magnitude_pruning"])
def test_subnetwork_is_the_hard_mask_of_every_masked_tensor(strategy):
    model, layers = masked_mlp(strategy=strategy, mask_bias=True)
    sub = ns.subnetwork(model)
    assert set(sub) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for name, layer in layers.items():
        assert sub[f"{name}.weight"].dtype == torch.bool and sub[f"{name}.weight"].shape == layer.weight.shape
        layer.eval()(torch.randn(1, layer.weight.shape[1]))
        assert torch.equal(sub[f"{name}.weight"], layer.weight_mask.bool())
        assert torch.equal(sub[f"{name}.bias"], layer.bias_mask.bool())
    # independent of the ablation mode and of train/eval
    ns.set_ablation(model, "zero_ablate")
    assert all(torch.equal(a, b) for a, b in zip(sub.values(), ns.subnetwork(model.train()).values()))


def test_subnetwork_at_mask_unit_shape():
    model, layers = masked_mlp(mask_unit="neuron")
    sub = ns.subnetwork(model, broadcast=False)
    assert sub["0.weight"].shape == (8, 1)
    assert torch.equal(sub["0.weight"], layers["0"].weight_mask_params > 0)


def test_save_masks_writes_safetensors_with_params_keys_and_metadata(tmp_path):
    model, layers = masked_mlp(strategy="hard_concrete", mask_bias=True)
    ns.save_masks(model, tmp_path / "m.safetensors")
    tensors = load_file(tmp_path / "m.safetensors")
    assert set(tensors) == {f"{n}.{t}" for n in ("0", "2")
                            for t in ("weight_mask_params", "bias_mask_params", "mask_key", "noise_step")}
    assert torch.equal(tensors["2.mask_key"], layers["2"].mask_key)


def test_load_masks_lists_every_mismatch_before_changing_anything(tmp_path):
    model, _ = masked_mlp()
    ns.save_masks(model, tmp_path / "m.safetensors")
    other = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.Linear(4, 4))
    ns.inject_masks(other, nn.Linear, key=1)
    before = ns.mask_state(other)
    with pytest.raises(ValueError) as err:
        ns.load_masks(other, tmp_path / "m.safetensors")
    msg = str(err.value)
    assert "missing from the file: ['3']" in msg and "2.weight_mask_params: shape (4, 8)" in msg
    after = ns.mask_state(other)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_load_masks_rejects_another_strategy_and_non_strict_loads_the_overlap(tmp_path):
    model, layers = masked_mlp()
    ns.save_masks(model, tmp_path / "m.safetensors")
    hc = mlp()
    ns.inject_masks(hc, nn.Linear, key=0, strategy="hard_concrete")
    with pytest.raises(ValueError, match="strategy"):
        ns.load_masks(hc, tmp_path / "m.safetensors")
    part = mlp()
    ns.inject_masks(part, "0", key=3)
    ns.load_masks(part, tmp_path / "m.safetensors", strict=False)
    assert torch.equal(part[0].weight_mask_params, layers["0"].weight_mask_params)
    with pytest.raises(ValueError, match="in the file but not in the model"):
        ns.load_masks(part, tmp_path / "m.safetensors")


def test_load_masks_restores_the_temperature(tmp_path):
    model, _ = masked_mlp()
    ns.set_temperature(model, 42.0)
    ns.save_masks(model, tmp_path / "m.safetensors")
    other = mlp()
    ns.inject_masks(other, nn.Linear, key=0)
    ns.load_masks(other, tmp_path / "m.safetensors")
    assert ns.get_temperature(other) == 42.0


def test_load_masks_refuses_a_foreign_file(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, tmp_path / "x.safetensors")
    model, _ = masked_mlp()
    with pytest.raises(ValueError, match="not a neurosurgeon mask file"):
        ns.load_masks(model, tmp_path / "x.safetensors")


@pytest.mark.parametrize("ablation", ["random_ablate", "randomly_sampled", "complement_sampled"])
def test_bake_reproduces_random_ablations_and_leaves_the_model_untouched(ablation):
    model, layers = masked_mlp(mask_bias=True, sparse=True)
    ns.set_ablation(model, ablation)
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 6)
    baked = ns.bake(model)
    assert type(baked[0]) is nn.Linear and type(baked[2]) is nn.Linear
    assert torch.equal(baked(x), model(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_bake_of_a_training_model_uses_hard_masks_and_keeps_its_mode():
    model, _ = masked_mlp()
    x = torch.randn(4, 6)
    expected = model.eval()(x)
    model.train()
    baked = ns.bake(model)
    assert baked.training
    assert torch.equal(baked.eval()(x), expected)
    assert all(p.requires_grad for p in baked.parameters())  # a plain, unfrozen model


def test_bake_unties_an_embedding_from_a_masked_output_layer():
    model = build("gpt2")
    layers = ns.inject_masks(model, "lm_head", key=0)
    with torch.no_grad():
        layers["lm_head"].weight_mask_params.normal_()
    baked = ns.bake(model.eval())
    assert baked.lm_head.weight is not baked.transformer.wte.weight
    assert torch.equal(baked.transformer.wte.weight, model.transformer.wte.weight)
    batch = ZOO["gpt2"].batch()
    assert torch.equal(ZOO["gpt2"].out(baked, batch), ZOO["gpt2"].out(model, batch))


def test_hard_mask_matches_the_functional_core():
    model, layers = masked_mlp(strategy="hard_concrete")
    sub = ns.subnetwork(model, broadcast=False)
    assert torch.equal(sub["0.weight"], F.hard_concrete_hard_mask(layers["0"].weight_mask_params).bool())
