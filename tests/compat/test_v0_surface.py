"""NeuroSurgeon 0.1.0's surface beyond the constructors: attributes, compat methods, errors, and
CircuitConfig as a transformers PretrainedConfig that reads 0.1.0's own config files."""

import pytest
import torch
import torch.nn as nn
import transformers

import neurosurgeon as ns


def test_no_bias_mask_params_attribute_unless_the_bias_is_masked():
    layer = ns.ContSparseLinear(4, 3, key=0)
    assert not hasattr(layer, "bias_mask_params") and "bias_mask_params" not in layer.state_dict()
    layer.mask_bias = True
    assert layer.bias_mask_params.shape == (3,)
    layer.mask_bias = False
    assert not hasattr(layer, "bias_mask_params")


@pytest.mark.parametrize("cls", [ns.ContSparseLinear, ns.HardConcreteLinear, ns.MagPruneLinear])
def test_compute_mask_gives_the_applied_mask_at_the_parameters_shape(cls):
    layer = cls(4, 3, mask_bias=True, key=0).eval()
    w_mask, b_mask = layer._compute_mask("weight_mask_params"), layer._compute_mask("bias_mask_params")
    p = layer.masked_parameters()
    assert torch.equal(w_mask, p.weight_mask) and w_mask.shape == (3, 4)
    assert torch.equal(b_mask, p.bias_mask) and b_mask.shape == (3,)
    with pytest.raises(ValueError, match="param_type"):
        layer._compute_mask("weight")


def test_unsupported_layers_raise_an_error_that_is_a_value_error_and_a_type_error():
    with pytest.raises(ValueError) as e:
        ns.ContSparseLinear.from_layer(nn.Embedding(3, 4))
    assert isinstance(e.value, TypeError)
    net = nn.Sequential(nn.Embedding(3, 4))
    for catch in (ValueError, TypeError):
        with pytest.raises(catch, match="Embedding"):
            ns.inject_masks(net, "0")


def test_circuit_config_is_a_pretrained_config_and_reads_the_originals(tmp_path):
    cfg = ns.CircuitConfig(mask_method="hard_concrete", mask_hparams={"mask_init_percentage": 0.3},
                           target_layers=["transformer.h.*.mlp.c_fc"], l0_lambda=1e-3, key=4)
    assert isinstance(cfg, transformers.PretrainedConfig)
    cfg.save_pretrained(tmp_path / "ours")
    back = ns.CircuitConfig.from_pretrained(tmp_path / "ours")
    assert (back.mask_method, back.mask_hparams, back.target_layers, back.l0_lambda, back.key) == (
        "hard_concrete", {"mask_init_percentage": 0.3}, ["transformer.h.*.mlp.c_fc"], 1e-3, 4)
    v0 = pytest.importorskip("NeuroSurgeon.Models.model_configs")
    theirs = v0.CircuitConfig(mask_method="continuous_sparsification",
                              mask_hparams={"ablation": "none", "mask_unit": "weight", "mask_bias": False,
                                            "mask_init_value": 0.2, "mask_init_percentage": 0.5},
                              target_layers=["transformer.h.0.mlp.c_fc"], freeze_base=True)
    theirs.save_pretrained(tmp_path / "v0")
    loaded = ns.CircuitConfig.from_pretrained(tmp_path / "v0")
    assert loaded.mask_hparams["mask_init_value"] == 0.2 and loaded.target_layers == ["transformer.h.0.mlp.c_fc"]
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20,
                                                                 n_positions=8))
    with pytest.warns(UserWarning, match="mask_init_percentage"):  # unused by this strategy: ignored
        circuit = ns.CircuitModel(theirs, model)  # the original's config object itself
    layer = circuit.mask_layers()["transformer.h.0.mlp.c_fc"]
    assert bool((layer.weight_mask_params == 0.2).all())
