"""NeuroSurgeon 0.1.0's own Models tests (``NeuroSurgeon/Models/test/*.py`` in its wheel), run
against ours, offline.

Each test function of the two files runs as written, assertions unchanged, with its imports
rewritten to ``neurosurgeon`` and its downloads replaced by stand-ins: ``from_pretrained`` of a
model class builds a small random model of the same family (the same seed on every call, as a
checkpoint would), tokenizers and image processors give inputs of the right keys, and the
datasets are 16 random examples in batches of 8. The ViT tests name transformers-4 modules
(``encoder.layer.N.attention.attention.query``), which transformers 5 calls ``layers.N.attention.q_proj``:
they are checked to fail on exactly that.
"""

from __future__ import annotations


import pytest
import torch
import transformers
from torch.utils.data import DataLoader

from _wheel import wheel_test_names, wheel_tests

v0_models = pytest.importorskip("NeuroSurgeon.Models")
transformers.logging.set_verbosity_error()

_FILES = ("test_circuit_model_bert.py", "test_other_models.py")
_VIT = ("test_replace_layers_vit", "test_forward_pass_vit", "test_training_vit")

pytestmark = pytest.mark.usefixtures("one_thread")


def _configs():
    bert = dict(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=64, attn_implementation="eager")
    gpt2 = dict(n_layer=2, n_embd=8, n_head=2, vocab_size=100, n_positions=64, attn_implementation="eager")
    # Four stages of two basic blocks, like ResNet-18 (the tests name stage 3 and its shortcut).
    resnet = dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[2, 2, 2, 2],
                  layer_type="basic", num_labels=3)
    vit = dict(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=12, num_attention_heads=2,
               intermediate_size=16, num_labels=3)
    return {
        "BertModel": (transformers.BertModel, transformers.BertConfig, bert),
        "BertForSequenceClassification": (transformers.BertForSequenceClassification, transformers.BertConfig, bert),
        "GPT2Model": (transformers.GPT2Model, transformers.GPT2Config, gpt2),
        "GPT2ForSequenceClassification": (transformers.GPT2ForSequenceClassification, transformers.GPT2Config, gpt2),
        "ResNetModel": (transformers.ResNetModel, transformers.ResNetConfig, resnet),
        "ResNetForImageClassification": (transformers.ResNetForImageClassification, transformers.ResNetConfig, resnet),
        "ViTModel": (transformers.ViTModel, transformers.ViTConfig, vit),
        "ViTForImageClassification": (transformers.ViTForImageClassification, transformers.ViTConfig, vit),
    }


def _model_standin(model_cls, config_cls, fields):
    class StandIn:
        @staticmethod
        def from_pretrained(name, **kwargs):
            with torch.random.fork_rng():
                torch.manual_seed(0)  # a checkpoint gives the same weights on every load
                return model_cls(config_cls(**{**fields, **kwargs})).eval()  # from_pretrained returns eval mode

    return StandIn


class _Tokenizer:
    pad_token_id = 0

    def __init__(self, token_types: bool):
        self.token_types = token_types

    @classmethod
    def standin(cls, token_types: bool):
        return type("Tokenizer", (), {"from_pretrained": staticmethod(lambda name, **kw: cls(token_types))})

    def __call__(self, text, return_tensors="pt", **kwargs):
        ids = torch.tensor([[(ord(c) % 97) + 2 for c in text][:16]])
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.token_types:
            out["token_type_ids"] = torch.zeros_like(ids)
        return out


def _image_processor(name):
    def process(image, return_tensors="pt"):
        return {"pixel_values": torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))}

    return process


def _loader(make_example):
    g = torch.Generator().manual_seed(4)
    examples = [make_example(g) for _ in range(16)]
    return DataLoader(examples, shuffle=False, batch_size=8)


def _text_dataset(token_types: bool):
    def example(g):
        ids = torch.randint(2, 100, (12,), generator=g)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (), generator=g)}
        if token_types:
            out["token_type_ids"] = torch.zeros_like(ids)
        return out

    return _loader(example)


def _image_dataset(processor_name):
    return _loader(lambda g: {"pixel_values": torch.randn(3, 16, 16, generator=g),
                              "labels": torch.randint(0, 3, (), generator=g)})


def _namespace(filename: str) -> dict:
    """The test file's functions, imports rewritten to neurosurgeon and to the stand-ins."""
    stand_ins = {name: _model_standin(*spec) for name, spec in _configs().items()}
    stand_ins.update(BertTokenizer=_Tokenizer.standin(True), GPT2Tokenizer=_Tokenizer.standin(False),
                     AutoImageProcessor=type("AutoImageProcessor", (), {"from_pretrained": staticmethod(_image_processor)}),
                     load_dataset=lambda *a, **k: {"test": {"image": [None]}})
    namespace = wheel_tests(v0_models, filename, stand_ins=stand_ins)
    # The datasets come from the hub: the same keys, random examples.
    namespace.update(setup_dataset=lambda: _text_dataset(True), setup_gpt_dataset=lambda tok: _text_dataset(False),
                     setup_image_dataset=_image_dataset)
    return namespace


_NAMESPACES = {f: _namespace(f) for f in _FILES}
_TESTS = wheel_test_names(_NAMESPACES)


def test_the_wheel_has_the_23_model_tests_and_we_run_them_all():
    assert len(_TESTS) == 23 and sum(name in _VIT for _, name in _TESTS) == 3


@pytest.mark.parametrize("filename, name", [t for t in _TESTS if t[1] not in _VIT], ids=lambda v: v)
def test_v0_model_test_passes_against_ours(filename, name):
    torch.manual_seed(0)
    _NAMESPACES[filename][name]()


@pytest.mark.parametrize("name", _VIT)
def test_v0_vit_tests_fail_only_on_transformers_4_module_names(name):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"encoder\.layer\.\d+\.(attention|output)"):
        _NAMESPACES["test_other_models.py"][name]()
