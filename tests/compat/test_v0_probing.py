"""NeuroSurgeon 0.1.0's own Probing tests (``test_residual_update_model.py`` and
``test_subnetwork_probe.py`` in its wheel), run against ours offline under transformers 5.

Each test function runs as written in the wheel, assertions unchanged, with its imports
rewritten to ``neurosurgeon``. Only what needs a download is replaced: each ``from_pretrained``
builds a random-weight model of the same family and width from a config (``prajjwal1/bert-tiny``:
2 layers of width 128; ``sshleifer/tiny-gpt2``: 2 layers), tokenizers are built from a small
vocabulary, and the ``beans`` image is random pixels.
"""

import pytest
import torch
import transformers as T
from transformers.convert_slow_tokenizer import bytes_to_unicode

from _wheel import wheel_test_names, wheel_tests

v0_probing = pytest.importorskip("NeuroSurgeon.Probing")

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


def _pretrained(load):
    return type("StandIn", (), {"from_pretrained": staticmethod(lambda name, **kwargs: load())})


_FILES = ("test_residual_update_model.py", "test_subnetwork_probe.py")
_MODELS = ("BertModel", "BertForMaskedLM", "GPT2Model", "GPT2LMHeadModel", "ViTModel", "ViTForMaskedImageModeling")
_STAND_INS = {
    **{name: _pretrained(lambda cls=getattr(T, name): _tiny(cls)) for name in _MODELS},
    "BertTokenizer": _pretrained(_bert_tokenizer), "BertTokenizerFast": _pretrained(_bert_tokenizer),
    "GPT2Tokenizer": _pretrained(_gpt2_tokenizer),
    "AutoImageProcessor": _pretrained(lambda: lambda image, return_tensors="pt": _image()),
    "load_dataset": lambda name: {"test": {"image": [None]}},
}
_NAMESPACES = {f: wheel_tests(v0_probing, f, stand_ins=_STAND_INS) for f in _FILES}
_TESTS = wheel_test_names(_NAMESPACES)


def test_the_wheel_has_the_13_probing_tests_and_we_run_them_all():
    assert len(_TESTS) == 13


@pytest.mark.parametrize("filename, name", _TESTS, ids=lambda v: v)
def test_v0_probing_test_passes_against_ours(filename, name):
    torch.manual_seed(0)
    _NAMESPACES[filename][name]()
