"""NeuroSurgeon 0.1.0's own Probing tests (``test_residual_update_model.py`` and
``test_subnetwork_probe.py`` from its wheel), run against ours offline under transformers 5.

The test bodies and assertions are 0.1.0's. Only what needs a download is replaced: each
``from_pretrained`` builds a random-weight model of the same family and width from a config
(``prajjwal1/bert-tiny``: 2 layers of width 128; ``sshleifer/tiny-gpt2``: 2 layers), tokenizers
are built from a small vocabulary, and the ``beans`` image is random pixels.
"""

from copy import deepcopy

import pytest
import torch
import transformers as T
from torch.optim import AdamW
from transformers.convert_slow_tokenizer import bytes_to_unicode

from neurosurgeon import (
    CircuitConfig,
    CircuitModel,
    MaskLayer,
    ResidualUpdateModel,
    ResidualUpdateModelConfig,
    SubnetworkProbe,
    SubnetworkProbeConfig,
)

T.logging.set_verbosity_error()

_WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sleeps on mat dog rests rug in this is a test".split()
_BERT = dict(vocab_size=len(_WORDS), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=512, max_position_embeddings=32, attn_implementation="eager")
_GPT2 = dict(vocab_size=256, n_embd=32, n_layer=2, n_head=2, n_positions=32, attn_implementation="eager")
_VIT = dict(image_size=32, patch_size=8, encoder_stride=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, attn_implementation="eager")
_CONFIGS = {"bert": (T.BertConfig, _BERT), "gpt2": (T.GPT2Config, _GPT2), "vit": (T.ViTConfig, _VIT)}


def _tiny(cls):
    """``cls`` with random weights in place of ``cls.from_pretrained(<0.1.0's tiny hub model>)``."""
    family = cls.config_class.model_type
    config_class, fields = _CONFIGS[family]
    torch.manual_seed(0)
    return cls(config_class(**fields))


def _bert_tokenizer():
    return T.BertTokenizerFast(vocab={w: i for i, w in enumerate(_WORDS)})


def _gpt2_tokenizer():
    # Byte-level BPE with no merges: one token per byte, offline.
    return T.GPT2TokenizerFast(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[])


def _image():
    return {"pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


# --- test_residual_update_model.py ------------------------------------------------------------

def test_base_model_initializations():
    # Test that residual models can be initialized for different model types
    bert_config = ResidualUpdateModelConfig("bert", [0, 1], True, True, updates=True, stream=True)
    bert = _tiny(T.BertModel)
    resid_model = ResidualUpdateModel(bert_config, bert)

    gpt_config = ResidualUpdateModelConfig("gpt", [0, 1], True, True, updates=True, stream=True)
    gpt = _tiny(T.GPT2Model)
    resid_model = ResidualUpdateModel(gpt_config, gpt)

    vit_config = ResidualUpdateModelConfig("vit", [0, 1], True, True, updates=True, stream=True)
    vit = _tiny(T.ViTModel)
    resid_model = ResidualUpdateModel(vit_config, vit)

    # Assert that one cannot add a hook to a layer that doesn't exist
    with pytest.raises(Exception):
        bert_config = ResidualUpdateModelConfig("bert", [24], True, True, updates=True, stream=True)
        bert = _tiny(T.BertModel)
        resid_model = ResidualUpdateModel(bert_config, bert)

    # Assert that one cannot specify the wrong model type
    with pytest.raises(Exception):
        wrong_config = ResidualUpdateModelConfig("gpt", [0], True, True, updates=True, stream=True)
        bert = _tiny(T.BertModel)
        resid_model = ResidualUpdateModel(wrong_config, bert)


def test_generative_model_initializations():
    # Test that residual models can be initialized for different model types
    bert_config = ResidualUpdateModelConfig("bert", [0, 1], True, True, updates=True, stream=True)
    bert = _tiny(T.BertForMaskedLM)
    resid_model = ResidualUpdateModel(bert_config, bert)

    gpt_config = ResidualUpdateModelConfig("gpt", [0, 1], True, True, updates=True, stream=True)
    gpt = _tiny(T.GPT2LMHeadModel)
    resid_model = ResidualUpdateModel(gpt_config, gpt)

    vit_config = ResidualUpdateModelConfig("vit", [0, 1], True, True, updates=True, stream=True)
    vit = _tiny(T.ViTForMaskedImageModeling)
    resid_model = ResidualUpdateModel(vit_config, vit)


def test_model_forward_pass():
    # Test that you can run a forward pass on models
    bert_config = ResidualUpdateModelConfig("bert", [0, 1], True, True, updates=True, stream=True)
    bert = _tiny(T.BertModel)
    resid_model = ResidualUpdateModel(bert_config, bert)

    tokenizer = _bert_tokenizer()
    ipt = tokenizer("This is a test", return_tensors="pt")
    resid_model(**ipt)


def test_residual_stream_dict_updates():
    # Test that running a forward pass updates the vector_cache dict correctly
    bert_config = ResidualUpdateModelConfig("bert", [0, 1], True, True, updates=True, stream=True)
    bert = _tiny(T.BertModel)
    resid_model = ResidualUpdateModel(bert_config, bert)

    tokenizer = _bert_tokenizer()
    ipt = tokenizer("This is a test", return_tensors="pt")
    resid_model(**ipt)

    assert "mlp_update_0" in resid_model.vector_cache.keys()
    assert "attn_update_0" in resid_model.vector_cache.keys()
    assert "mlp_update_1" in resid_model.vector_cache.keys()
    assert "attn_update_1" in resid_model.vector_cache.keys()
    assert "mlp_stream_0" in resid_model.vector_cache.keys()
    assert "attn_stream_0" in resid_model.vector_cache.keys()
    assert "mlp_stream_1" in resid_model.vector_cache.keys()
    assert "attn_stream_1" in resid_model.vector_cache.keys()

    assert resid_model.vector_cache["mlp_update_0"].shape == (1, 6, 128)
    assert resid_model.vector_cache["mlp_update_0"].requires_grad == True
    assert resid_model.vector_cache["mlp_stream_0"].shape == (1, 6, 128)
    assert resid_model.vector_cache["mlp_stream_0"].requires_grad == True
    assert not torch.all(resid_model.vector_cache["mlp_update_0"] == resid_model.vector_cache["mlp_stream_0"])

    assert resid_model.vector_cache["attn_update_0"].shape == (1, 6, 128)
    assert resid_model.vector_cache["attn_update_0"].requires_grad == True
    assert resid_model.vector_cache["attn_stream_0"].shape == (1, 6, 128)
    assert resid_model.vector_cache["attn_stream_0"].requires_grad == True
    assert not torch.all(resid_model.vector_cache["attn_update_0"] == resid_model.vector_cache["attn_stream_0"])


def test_self_consistency_bert():
    # Assert that you can recover the next layer from the previous layer + the residual stream updates
    bert_config = ResidualUpdateModelConfig("bert", [1], True, True, updates=True, stream=True)
    bert = _tiny(T.BertModel)
    resid_model = ResidualUpdateModel(bert_config, bert)
    resid_model.eval()

    tokenizer = _bert_tokenizer()
    ipt = tokenizer("This is a test", return_tensors="pt")
    output = resid_model(**ipt, return_dict=True, output_hidden_states=True)
    pre_layer_residual_stream = output.hidden_states[1]
    post_layer_residual_stream = output.hidden_states[2]

    attn_update = resid_model.vector_cache["attn_update_1"]
    mlp_update = resid_model.vector_cache["mlp_update_1"]

    # Need to do the layernorms in the right place
    mid_stream = resid_model.wrapped_model.encoder.layer[1].attention.output.LayerNorm(
        pre_layer_residual_stream + attn_update
    )
    assert torch.all(mid_stream == resid_model.vector_cache["attn_stream_1"])

    post_stream = resid_model.wrapped_model.encoder.layer[1].output.LayerNorm(mid_stream + mlp_update)
    assert torch.all(post_stream == resid_model.vector_cache["mlp_stream_1"])
    assert torch.all(post_stream == post_layer_residual_stream)


def test_self_consistency_gpt():
    # Assert that you can recover the next layer from the previous layer + the residual stream updates
    gpt_config = ResidualUpdateModelConfig("gpt", [0], True, True, updates=True, stream=True)
    gpt = _tiny(T.GPT2Model)
    resid_model = ResidualUpdateModel(gpt_config, gpt)
    resid_model.eval()

    tokenizer = _gpt2_tokenizer()
    ipt = tokenizer("This is a test", return_tensors="pt")
    output = resid_model(**ipt, return_dict=True, output_hidden_states=True)

    pre_layer_residual_stream = output.hidden_states[0]
    post_layer_residual_stream = output.hidden_states[1]

    attn_update = resid_model.vector_cache["attn_update_0"]
    mlp_update = resid_model.vector_cache["mlp_update_0"]

    mid_stream = pre_layer_residual_stream + attn_update
    assert torch.all(mid_stream == resid_model.vector_cache["attn_stream_0"])

    post_stream = mid_stream + mlp_update
    assert torch.all(post_stream == resid_model.vector_cache["mlp_stream_0"])
    assert torch.all(post_stream == post_layer_residual_stream)


def test_self_consistency_vit():
    # Assert that you can recover the next layer from the previous layer + the residual stream updates
    vit_config = ResidualUpdateModelConfig("vit", [0], True, True, updates=True, stream=True)
    vit = _tiny(T.ViTModel)
    resid_model = ResidualUpdateModel(vit_config, vit)
    resid_model.eval()

    ipt = _image()
    output = resid_model(**ipt, return_dict=True, output_hidden_states=True)

    pre_layer_residual_stream = output.hidden_states[0]
    post_layer_residual_stream = output.hidden_states[1]

    attn_update = resid_model.vector_cache["attn_update_0"]
    mlp_update = resid_model.vector_cache["mlp_update_0"]

    mid_stream = pre_layer_residual_stream + attn_update
    assert torch.all(mid_stream == resid_model.vector_cache["attn_stream_0"])

    post_stream = mid_stream + mlp_update
    assert torch.all(post_stream == resid_model.vector_cache["mlp_stream_0"])
    assert torch.all(post_stream == post_layer_residual_stream)


# --- test_subnetwork_probe.py -----------------------------------------------------------------

def create_test_probe(labeling="sequence"):
    circuit_config = CircuitConfig(
        mask_method="hard_concrete",
        mask_hparams={"ablation": "none", "mask_unit": "neuron", "mask_bias": False, "mask_init_percentage": 0.9},
        target_layers=["encoder.layer.1.output.dense"],
        freeze_base=True,
        add_l0=True,
        l0_lambda=1e-8,
    )
    resid_config = ResidualUpdateModelConfig("bert", target_layers=[1], mlp=True, attn=False, updates=False, stream=True)
    probe_config = SubnetworkProbeConfig(
        probe_vectors="mlp_stream_1",
        n_classes=2,
        circuit_config=circuit_config,
        resid_config=resid_config,
        labeling=labeling,
    )
    bert = _tiny(T.BertModel)
    probe = SubnetworkProbe(probe_config, bert)
    return probe


def test_subnetwork_probe_initialization():
    # Assert that you can initialize a SubnetworkProbe Model
    create_test_probe()


def _cs_config(freeze_base):
    return CircuitConfig(
        mask_method="continuous_sparsification",
        mask_hparams={"ablation": "none", "mask_unit": "weight", "mask_bias": False, "mask_init_value": 0.0},
        target_layers=["encoder.layer.1.output.dense"],
        freeze_base=freeze_base,
        add_l0=True,
        l0_lambda=1e-8,
    )


def test_incompatible_configuration_exceptions():
    # Assert that an error is thrown if configurations are incompatible with subnetwork probing
    bert = _tiny(T.BertModel)

    circuit_config = _cs_config(freeze_base=False)
    resid_config = ResidualUpdateModelConfig("bert", target_layers=[1], mlp=True, attn=True, updates=False, stream=True)
    probe_config = SubnetworkProbeConfig(probe_vectors="mlp_stream_1", n_classes=2, circuit_config=circuit_config,
                                         resid_config=resid_config)
    with pytest.raises(Exception):
        SubnetworkProbe(probe_config, bert)

    circuit_config = _cs_config(freeze_base=True)
    resid_config = ResidualUpdateModelConfig("bert", target_layers=[1, 2], mlp=True, attn=False, updates=False,
                                             stream=True)
    probe_config = SubnetworkProbeConfig(probe_vectors="mlp_stream_1", n_classes=2, circuit_config=circuit_config,
                                         resid_config=resid_config)
    with pytest.raises(Exception):
        SubnetworkProbe(probe_config, bert)

    circuit_config = _cs_config(freeze_base=True)
    resid_config = ResidualUpdateModelConfig("bert", target_layers=[1], mlp=False, attn=False, updates=False,
                                             stream=True)
    probe_config = SubnetworkProbeConfig(probe_vectors="mlp_stream_1", n_classes=2, circuit_config=circuit_config,
                                         resid_config=resid_config)
    with pytest.raises(Exception):
        SubnetworkProbe(probe_config, bert)

    probe_config = SubnetworkProbeConfig(probe_vectors="mlp_stream_1", n_classes=2, circuit_config=circuit_config,
                                         resid_config=resid_config, labeling="error")
    with pytest.raises(Exception):
        SubnetworkProbe(probe_config, bert)


def test_subnetwork_probe_training_state():
    # Assert that everything is frozen/in eval mode except the target layer's mask parameters,
    # even when the overall model is in training mode
    probe = create_test_probe()
    probe.train()

    for name, m in probe.named_modules():
        if (
            issubclass(m.__class__, MaskLayer)
            or issubclass(m.__class__, SubnetworkProbe)
            or issubclass(m.__class__, ResidualUpdateModel)
            or issubclass(m.__class__, CircuitModel)
            or "probe" in name
            or "loss" in name
        ):
            assert m.training == True
        else:
            assert m.training == False

    probe.train(False)

    for name, m in probe.named_modules():
        assert m.training == False


def test_forward_pass_sequence():
    # Assert that forward passes work when labels are at the sequence level
    probe = create_test_probe(labeling="sequence")
    tokenizer = _bert_tokenizer()

    input = ["the cat sleeps on the mat", "the dog rests on the rug"]
    token_mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]).bool()
    labels = torch.tensor([[1], [0]])
    encs = tokenizer(input, return_tensors="pt")
    _ = probe(**encs, labels=labels, token_mask=token_mask)

    # Assert that residual stream updates are created in the right layer
    assert probe.config.probe_vectors in probe.wrapped_model.vector_cache

    # Assert that # labels must be equal to # of input examples
    with pytest.raises(Exception):
        input = ["the cat sleeps on the mat"]
        token_mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0]]).bool()
        labels = torch.tensor([[0, 1]])
        encs = tokenizer(input, return_tensors="pt")
        out = probe(**encs, labels=labels, token_mask=token_mask)

    with pytest.raises(Exception):
        input = ["the cat sleeps on the mat"]
        token_mask = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 0]]).bool()
        labels = torch.tensor([[1]])
        encs = tokenizer(input, return_tensors="pt")
        out = probe(**encs, labels=labels, token_mask=token_mask)


def test_forward_pass_token():
    # Assert that forward passes work when labels are at the token level
    probe = create_test_probe("token")
    tokenizer = _bert_tokenizer()

    input = ["the cat sleeps on the mat", "the dog rests on the rug"]
    token_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1, 0]]).bool()
    labels = torch.tensor([[1, 0, 1, 0, 1, 0], [0, 1, 1, 1, 0, 0]])
    encs = tokenizer(input, return_tensors="pt")
    _ = probe(**encs, labels=labels, token_mask=token_mask)

    # Assert that residual stream updates are created in the right layer
    assert probe.config.probe_vectors in probe.wrapped_model.vector_cache

    # Assert that # labels must be equal to # of tokens in mask examples
    with pytest.raises(Exception):
        input = ["the cat sleeps on the mat"]
        token_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]]).bool()
        labels = torch.tensor([[1]])
        encs = tokenizer(input, return_tensors="pt")
        out = probe(**encs, labels=labels, token_mask=token_mask)

    with pytest.raises(Exception):
        input = ["the cat sleeps on the mat"]
        token_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0]]).bool()
        labels = torch.tensor([[1, 0, 0, 0, 1, 1, 1, 0]])
        encs = tokenizer(input, return_tensors="pt")
        out = probe(**encs, labels=labels, token_mask=token_mask)


def test_training_subnetwork_probe():
    # Assert that training subnetwork probe only updates the mask parameters
    probe = create_test_probe(labeling="sequence")
    original_probe = deepcopy(probe)
    tokenizer = _bert_tokenizer()

    input_batch = ["the cat sleeps on the mat", "the dog rests in the rug"]
    token_mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]).bool()
    encs = tokenizer(input_batch, return_tensors="pt")
    labels = torch.tensor([[0], [1]])

    optimizer = AdamW(probe.parameters(), lr=5e-2)

    probe.train()

    outputs = probe(**encs, labels=labels, token_mask=token_mask)
    loss = outputs.loss
    loss.backward()

    optimizer.step()
    optimizer.zero_grad()

    for name, param in probe.named_parameters():
        if "weight_mask_param" in name:
            assert ~torch.all(param == original_probe.state_dict()[name])
        elif "probe" in name:
            assert ~torch.all(param == original_probe.state_dict()[name])
        else:
            assert torch.all(param == original_probe.state_dict()[name])
