"""Whole-model checkpoints both ways between NeuroSurgeon 0.1.0's ``CircuitModel`` and ours.

For BERT, GPT-2 and a ResNet (tiny configs, random weights), every strategy, weight and neuron
units, with and without bias masks: a 0.1.0 state dict (saved after it evaluated random
ablations, so it holds the tensors those register) loads strictly into ours built from the
same config after :func:`from_v0_state_dict`, and ours loads strictly into 0.1.0 after
:func:`to_v0_state_dict`; eval outputs are bitwise equal each way. Magnitude pruning is built
with ``rule="v0"`` (0.1.0's signed quantile rule) in ``mask_hparams``, which 0.1.0 ignores.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import neurosurgeon as ns
from neurosurgeon.compat import V0_ABLATION_TENSORS, V0_CONV_NEURON_UNITS, from_v0_state_dict, to_v0_state_dict

v0_circuit = pytest.importorskip("NeuroSurgeon.Models.circuit_model")
v0_configs = pytest.importorskip("NeuroSurgeon.Models.model_configs")
transformers.logging.set_verbosity_error()

pytestmark = pytest.mark.usefixtures("one_thread")


def _bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12,
        max_position_embeddings=16, num_labels=2, attn_implementation="eager"))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=8, n_head=2, vocab_size=30, n_positions=16, attn_implementation="eager"))


def _resnet():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], layer_type="basic", num_labels=3))


def _ids():
    return {"input_ids": torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))}


def _pixels():
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))}


# Targets cover every layer type: Linear; GPT-2 Conv1D; Conv2d with a 7x7 and a 3x3 kernel (bias-free in ResNet).
ARCHS = {
    "bert": (_bert, ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.output.dense", "classifier"], _ids),
    "gpt2": (_gpt2, ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj", "lm_head"], _ids),
    "resnet": (_resnet, ["resnet.embedder.embedder.convolution", "resnet.encoder.stages.0.layers.0.layer.0.convolution",
                         "classifier.1"], _pixels),
}
METHODS = {"continuous_sparsification": {"mask_init_value": 0.0}, "hard_concrete": {"mask_init_percentage": 0.5},
           "magnitude_pruning": {"prune_percentage": 0.5, "rule": "v0"}}
CASES = [pytest.param(arch, method, unit, bias, id=f"{arch}-{method}-{unit}-{'bias' if bias else 'nobias'}")
         for arch in ARCHS for method in METHODS for unit in ("weight", "neuron") for bias in (False, True)
         if not (method == "magnitude_pruning" and unit == "neuron")]


def _hparams(method, unit, bias):
    return {"ablation": "none", "mask_unit": unit, "mask_bias": bias, **METHODS[method]}


def _v0_model(arch, method, unit, bias, seed):
    build, targets, _ = ARCHS[arch]
    torch.manual_seed(seed)
    config = v0_configs.CircuitConfig(mask_method=method, mask_hparams=_hparams(method, unit, bias),
                                      target_layers=targets, freeze_base=True, add_l0=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0.1.0 warns for mask_bias on ResNet's bias-free convolutions
        return v0_circuit.CircuitModel(config, build())


def _our_model(arch, method, unit, bias, seed):
    build, targets, _ = ARCHS[arch]
    torch.manual_seed(seed)
    config = ns.CircuitConfig(mask_method=method, mask_hparams=_hparams(method, unit, bias), target_layers=targets,
                              freeze_base=True, add_l0=False, key=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ns.CircuitModel(config, build())


def _randomise_masks(model, seed):
    """Mixed-sign mask parameters (and signed weights already), so hard masks are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mask_params"):
                p.copy_(torch.randn(p.shape, generator=g))


def _outputs(model, batch, modes=("none", "zero_ablate")):
    model.train(False)
    out = {}
    for mode in modes:
        model.set_ablate_mode(mode)
        with torch.no_grad():
            out[mode] = model(**batch).logits
    model.set_ablate_mode("none")
    return out


def _trained(make, arch, method, unit, bias):
    """(a batch, a model with random masks, its eval outputs by ablation)."""
    batch, model = ARCHS[arch][2](), make(arch, method, unit, bias, seed=0)
    _randomise_masks(model, seed=1)
    return batch, model, _outputs(model, batch)


def _assert_equal(got, expected):
    assert got.keys() == expected.keys()
    for mode in expected:
        assert torch.equal(got[mode], expected[mode]), mode


@pytest.mark.parametrize("arch, method, unit, bias", CASES)
def test_v0_checkpoint_loads_strictly_into_ours_with_the_same_eval_outputs(arch, method, unit, bias):
    batch, theirs, expected = _trained(_v0_model, arch, method, unit, bias)
    # 0.1.0 registers its draws once it evaluates these ablations, and saves them. (Its layers
    # cannot leave a sampled ablation afterwards, so the expected outputs are taken first.)
    for mode in ("random_ablate", "randomly_sampled"):
        theirs.set_ablate_mode(mode)
        with torch.no_grad():
            theirs(**batch)
    saved = theirs.state_dict()
    assert any(k.endswith(".random_weight") for k in saved)

    ours = _our_model(arch, method, unit, bias, seed=2)
    with pytest.warns(UserWarning, match="registered ablation tensors") as record:
        converted = from_v0_state_dict(saved)
    dropped = [k for k in saved if k.rsplit(".", 1)[-1] in V0_ABLATION_TENSORS]
    message = str(next(r.message for r in record if "registered ablation" in str(r.message)))
    assert dropped and all(k in message and k not in converted for k in dropped)
    # A ResNet neuron checkpoint's 7x7 and 3x3 convolutions arrive in 0.1.0's unit, with a warning.
    switched = arch == "resnet" and unit == "neuron"
    with pytest.warns(UserWarning, match="now use that unit") if switched else warnings.catch_warnings():
        if not switched:
            warnings.simplefilter("error")
        result = ours.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_equal(_outputs(ours, batch), expected)


@pytest.mark.parametrize("arch, method, unit, bias", CASES)
def test_our_checkpoint_loads_strictly_into_v0_with_the_same_outputs(arch, method, unit, bias):
    batch, ours, expected = _trained(_our_model, arch, method, unit, bias)
    theirs = _v0_model(arch, method, unit, bias, seed=2)
    theirs.load_state_dict(to_v0_state_dict(ours.state_dict()), strict=True)
    _assert_equal(_outputs(theirs, batch), expected)
    if method == "continuous_sparsification":  # soft masks sigma(beta theta) agree entry by entry, too
        ours.train(True)
        theirs.train(True)
        with torch.no_grad():
            assert torch.equal(theirs(**batch).logits, ours(**batch).logits)


def test_our_conv_neuron_masks_expand_to_v0s_per_kernel_position_shape_losslessly():
    ours = _our_model("resnet", "hard_concrete", "neuron", False, seed=0)
    _randomise_masks(ours, seed=1)
    sd = ours.state_dict()
    v0 = to_v0_state_dict(sd)
    key = "wrapped_model.resnet.embedder.embedder.convolution.weight_mask_params"
    assert sd[key].shape == (4, 1, 1, 1) and v0[key].shape == (4, 1, 7, 7)
    assert torch.equal(v0[key], sd[key].expand(4, 1, 7, 7))  # every kernel position holds its channel's value
    linear = "wrapped_model.classifier.1.weight_mask_params"
    assert v0[linear] is sd[linear]  # other masks are shared, not copied


def test_circuit_model_takes_v0_conv_neuron_masks_in_v0s_unit_and_trains_them_as_v0_does():
    theirs = _v0_model("resnet", "continuous_sparsification", "neuron", False, seed=0)
    _randomise_masks(theirs, seed=1)
    ours = _our_model("resnet", "continuous_sparsification", "neuron", False, seed=2)
    layers = ours.mask_layers()
    convs = ["resnet.embedder.embedder.convolution", "resnet.encoder.stages.0.layers.0.layer.0.convolution"]
    with pytest.warns(UserWarning, match="now use that unit") as record:
        ours.load_state_dict(from_v0_state_dict(theirs.state_dict()), strict=True)
    assert all(name in str(record[0].message) for name in convs)
    assert [layers[n].mask_unit for n in convs] == [V0_CONV_NEURON_UNITS["conv2d"]] * 2
    assert layers["classifier.1"].mask_unit == "neuron"  # a Linear neuron mask has 0.1.0's shape already
    ours.train(True)
    theirs.train(True)
    batch = _pixels()
    with torch.no_grad():  # soft masks too: each entry of theta is 0.1.0's
        assert torch.equal(ours(**batch).logits, theirs(**batch).logits)
    # Further training updates the same parameters: one theta per (output channel, kernel
    # position), its gradient summed over the input channels, as in 0.1.0.
    ours(**batch).logits.square().sum().backward()
    theirs(**batch).logits.square().sum().backward()
    v0_layers = dict(theirs.named_modules())
    for name in convs:
        mine, v0 = layers[name].weight_mask_params, v0_layers[f"wrapped_model.{name}"].weight_mask_params
        assert mine.shape == v0.shape == (v0.shape[0], 1, *layers[name].weight.shape[2:])
        torch.testing.assert_close(mine.grad, v0.grad, rtol=1e-5, atol=1e-7)
        assert mine.grad.abs().sum() > 0


def test_a_failed_load_leaves_the_units_and_masks_as_they_were():
    ours = _our_model("resnet", "hard_concrete", "neuron", False, seed=0)
    layer = ours.mask_layers()["resnet.embedder.embedder.convolution"]
    theta = layer.weight_mask_params
    converted = from_v0_state_dict(_v0_model("resnet", "hard_concrete", "neuron", False, seed=1).state_dict())
    converted.pop("wrapped_model.classifier.1.weight")
    with pytest.warns(UserWarning, match="now use that unit"), pytest.raises(RuntimeError, match="classifier.1.weight"):
        ours.load_state_dict(converted, strict=True)
    assert layer.mask_unit == "neuron" and layer.weight_mask_params is theta


def test_raw_v0_conv_neuron_checkpoints_load_without_the_conversion():
    theirs = _v0_model("resnet", "continuous_sparsification", "neuron", False, seed=0)
    _randomise_masks(theirs, seed=1)
    ours = _our_model("resnet", "continuous_sparsification", "neuron", False, seed=1)
    with pytest.warns(UserWarning, match="now use that unit"):
        result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert ours.mask_layers()["resnet.embedder.embedder.convolution"].mask_unit == V0_CONV_NEURON_UNITS["conv2d"]
    _assert_equal(_outputs(ours, _pixels()), _outputs(theirs, _pixels()))


def test_from_v0_state_dict_is_silent_when_there_is_nothing_to_drop():
    saved = _v0_model("gpt2", "hard_concrete", "weight", True, seed=0).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = from_v0_state_dict(saved)
    assert list(converted) == list(saved)

