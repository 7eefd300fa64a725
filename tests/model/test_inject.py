"""inject_masks: target selection, errors, tied weights, keys from one seed, frozen base."""

import pytest
import torch
import torch.nn as nn
from model_zoo import build
from transformers.pytorch_utils import Conv1D

import neurosurgeon as ns
from neurosurgeon.functional import random as nr
from neurosurgeon.modules import ContSparseGPTConv1D, HardConcreteLinear, MagPruneConv2d, MaskLayer


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_exact_names_glob_patterns_and_types_select_the_same_layers():
    by_name = ns.inject_masks(build("gpt2"), ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"], key=0)
    by_glob = ns.inject_masks(build("gpt2"), "transformer.h.*.mlp.c_fc", key=0)
    assert list(by_name) == list(by_glob) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    by_type = ns.inject_masks(build("gpt2"), Conv1D, key=0)
    assert len(by_type) == 8 and all(isinstance(m, ContSparseGPTConv1D) for m in by_type.values())
    deep = ns.inject_masks(build("gpt2"), "**.c_proj", key=0)
    assert list(deep) == [f"transformer.h.{i}.{p}.c_proj" for i in (0, 1) for p in ("attn", "mlp")]


def test_single_star_stays_within_one_name_part():
    with pytest.raises(ValueError, match="matches no module"):
        ns.inject_masks(build("gpt2"), "transformer.*.c_fc", key=0)


def test_unmatched_name_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"'transformer.h.0.mlp.c_fcc'.*did you mean"):
        ns.inject_masks(build("gpt2"), "transformer.h.0.mlp.c_fcc", key=0)
    with pytest.raises(ValueError, match="'nothing.*'"):
        ns.inject_masks(build("gpt2"), ["transformer.h.0.mlp.c_fc", "nothing.*"], key=0)


def test_unsupported_layer_is_a_type_error_naming_it_and_leaves_the_model_unchanged():
    model = build("gpt2")
    with pytest.raises(TypeError, match=r"'transformer.h.0.ln_1'.*LayerNorm"):
        ns.inject_masks(model, ["transformer.h.0.mlp.c_fc", "transformer.h.0.ln_1"], key=0)
    assert not ns.mask_layers(model)
    with pytest.raises(TypeError, match="Embedding"):
        ns.inject_masks(model, nn.Embedding, key=0)
    with pytest.raises(TypeError, match="matches no maskable layer"):
        ns.inject_masks(model, "transformer.h.*.ln_?", key=0)


def test_patterns_skip_unsupported_modules_they_match():
    layers = ns.inject_masks(build("gpt2"), "transformer.h.0.mlp.*", key=0)
    assert list(layers) == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]


def test_reinjecting_a_mask_layer_is_an_error():
    model = mlp()
    ns.inject_masks(model, "0", key=0)
    with pytest.raises(ValueError, match="already a mask layer"):
        ns.inject_masks(model, "0", key=0)


def test_invalid_options_and_unknown_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="strategy"):
        ns.inject_masks(mlp(), nn.Linear, strategy="l1")
    with pytest.raises(ValueError, match="ablation"):
        ns.inject_masks(mlp(), nn.Linear, ablation="zero")
    with pytest.raises(TypeError, match=r"unknown hyper-parameter.*prune_percentage"):
        ns.inject_masks(mlp(), nn.Linear, prune_percentage=0.3)
    with pytest.raises(ValueError, match="mask_unit"):
        ns.inject_masks(mlp(), nn.Linear, strategy="magnitude_pruning", mask_unit="neuron")
    with pytest.raises(TypeError, match="targets"):
        ns.inject_masks(mlp(), 3)


@pytest.mark.parametrize("strategy,cls,hp", [
    ("hard_concrete", HardConcreteLinear, {"mask_init_percentage": 0.9, "temperature": 0.5}),
    ("magnitude_pruning", None, {"prune_percentage": 0.5}),
])
def test_strategy_and_hyperparameters_reach_every_layer(strategy, cls, hp):
    model = mlp()
    layers = ns.inject_masks(model, nn.Linear, strategy=strategy, key=0, mask_bias=True, **hp)
    for layer in layers.values():
        assert layer._strategy == strategy and layer.mask_bias
        for k, v in hp.items():
            assert getattr(layer, k) == v
    if cls is not None:
        assert all(isinstance(m, cls) for m in layers.values())


def test_neuron_masks_have_one_entry_per_output_unit():
    layers = ns.inject_masks(build("gpt2"), Conv1D, key=0, mask_unit="neuron")
    for layer in layers.values():
        assert layer.weight_mask_params.shape == (1, layer.weight.shape[1])


def test_conv2d_magnitude_pruning_on_resnet():
    layers = ns.inject_masks(build("resnet"), nn.Conv2d, strategy="magnitude_pruning", key=0)
    assert all(isinstance(m, MagPruneConv2d) for m in layers.values())


def test_mask_layers_share_the_base_parameters_and_tied_weights_stay_tied():
    model = build("gpt2")
    wte = model.transformer.wte.weight
    layers = ns.inject_masks(model, "lm_head", key=0)
    assert model.lm_head.weight is wte and layers["lm_head"].weight is wte
    # training the masks never moves the tied embedding
    model.train()
    ids = torch.randint(0, 50, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    assert wte.grad is None


def test_two_layers_sharing_a_weight_share_one_mask_and_stay_tied_after_bake():
    shared = nn.Linear(4, 4)
    other = nn.Linear(4, 4)
    other.weight = shared.weight
    model = nn.Sequential(shared, nn.Tanh(), other)
    layers = ns.inject_masks(model, nn.Linear, key=0)
    assert layers["0"].weight_mask_params is layers["2"].weight_mask_params
    with torch.no_grad():
        layers["0"].weight_mask_params.normal_()
    baked = ns.bake(model)
    assert baked[0].weight is baked[2].weight
    assert not torch.equal(baked[0].bias, baked[2].bias)


def test_a_module_registered_twice_becomes_one_mask_layer():
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    layers = ns.inject_masks(model, nn.Linear, key=0)
    assert layers["0"] is layers["2"] is model[0] is model[2]
    assert list(ns.mask_layers(model)) == ["0"]


def test_layer_keys_are_fold_in_of_the_model_key_by_index():
    model = build("bert")
    layers = ns.inject_masks(model, "**.intermediate.dense", key=5)
    for i, layer in enumerate(ns.mask_layers(model).values()):
        assert torch.equal(layer.mask_key, nr.fold_in(nr.key(5), i))
    again = ns.inject_masks(build("bert"), "**.intermediate.dense", key=nr.key(5))
    assert all(torch.equal(a.mask_key, b.mask_key) for a, b in zip(layers.values(), again.values()))


def test_without_a_key_torch_manual_seed_makes_injection_reproducible():
    torch.manual_seed(3)
    a = ns.inject_masks(mlp(), nn.Linear)
    torch.manual_seed(3)
    b = ns.inject_masks(mlp(), nn.Linear)
    assert all(torch.equal(x.mask_key, y.mask_key) for x, y in zip(a.values(), b.values()))


def test_frozen_base_keeps_dropout_and_batchnorm_in_eval_while_masks_train():
    model = mlp()
    ns.inject_masks(model, nn.Linear, key=0)
    model.train()
    assert model.training and all(m.training for m in ns.mask_layers(model).values())
    assert not model[2].training and not model[4].training
    stats = model[4].running_mean.clone()
    x = torch.randn(16, 4)
    y1, y2 = model(x), model(x)
    assert torch.equal(y1, y2)  # no dropout noise
    assert torch.equal(model[4].running_mean, stats)  # batch-norm statistics not updated
    model[4].train()  # whichever module train() is called on
    assert not model[4].training
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        f"{i}.weight_mask_params" for i in (0, 3, 5)]


def test_freeze_base_false_and_unfreezing_restore_plain_training():
    model = mlp()
    model[0].bias.requires_grad_(False)
    ns.inject_masks(model, nn.Linear, key=0)
    assert ns.is_base_frozen(model)
    ns.set_freeze_base(model, False)
    assert not ns.is_base_frozen(model)
    model.train()
    assert model[2].training and model[4].training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad
    loose = mlp()
    ns.inject_masks(loose, nn.Linear, key=0, freeze_base=False)
    assert loose.train()[2].training and loose[0].weight.requires_grad


def test_inject_keeps_the_layers_mode():
    model = mlp().eval()
    ns.inject_masks(model, nn.Linear, key=0)
    assert not any(m.training for m in ns.mask_layers(model).values())
    assert isinstance(model[0], MaskLayer)


def test_the_freeze_survives_deepcopy_and_pickling(tmp_path):
    import copy
    model = mlp()
    ns.inject_masks(model, nn.Linear, key=0)
    torch.save(model, tmp_path / "m.pt")
    for clone in (copy.deepcopy(model), torch.load(tmp_path / "m.pt", weights_only=False)):
        clone.train()
        assert clone[0].training and not clone[2].training and not clone[4].training
        assert clone[2].train() is clone[2]


def test_injecting_twice_then_unfreezing_restores_every_base_parameter():
    model = mlp()
    ns.inject_masks(model, "0", key=0)
    ns.inject_masks(model, "3", key=1)
    ns.set_freeze_base(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_the_model_itself_cannot_be_a_target():
    with pytest.raises(ValueError, match="the model itself"):
        ns.inject_masks(nn.Linear(2, 2), "", key=0)
