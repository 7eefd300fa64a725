"""NeuroSurgeon 0.1.0's own Probing tests (``test_residual_update_model.py`` and
``test_subnetwork_probe.py`` in its wheel), run against ours offline under transformers 5.

Each test function runs as written in the wheel, assertions unchanged, with its imports
rewritten to ``neurosurgeon``. Only what needs a download is replaced: each ``from_pretrained``
builds a random-weight model of the same family and width from a config (``prajjwal1/bert-tiny``:
2 layers of width 128; ``sshleifer/tiny-gpt2``: 2 layers), tokenizers are built from a small
vocabulary, and the ``beans`` image is random pixels.
"""

import inspect
import pathlib
import re

import pytest
import torch
import transformers as T
from transformers.convert_slow_tokenizer import bytes_to_unicode

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


def _namespace(filename: str) -> dict:
    """The wheel's test file, run with its imports pointed at neurosurgeon and the stand-ins."""
    path = pathlib.Path(inspect.getfile(v0_probing)).parent / "test" / filename
    source = path.read_text()
    source = re.sub(r"^from transformers import \((.|\n)*?\)\n|^from transformers import .*\n", "", source, flags=re.M)
    source = source.replace("from datasets import load_dataset\n", "")
    source = re.sub(r"^from \.+[\w.]* import", "from neurosurgeon import", source, flags=re.M)
    assert "NeuroSurgeon" not in source and "from ." not in source
    models = ("BertModel", "BertForMaskedLM", "GPT2Model", "GPT2LMHeadModel", "ViTModel", "ViTForMaskedImageModeling")
    namespace = {name: _pretrained(lambda cls=getattr(T, name): _tiny(cls)) for name in models}
    namespace.update(BertTokenizer=_pretrained(_bert_tokenizer), BertTokenizerFast=_pretrained(_bert_tokenizer),
                     GPT2Tokenizer=_pretrained(_gpt2_tokenizer),
                     AutoImageProcessor=_pretrained(lambda: lambda image, return_tensors="pt": _image()),
                     load_dataset=lambda name: {"test": {"image": [None]}})
    exec(compile(source, str(path), "exec"), namespace)
    return namespace


_FILES = ("test_residual_update_model.py", "test_subnetwork_probe.py")
_NAMESPACES = {f: _namespace(f) for f in _FILES}
_TESTS = [(f, name) for f, ns in _NAMESPACES.items() for name in ns if name.startswith("test_")]


def test_the_wheel_has_the_13_probing_tests_and_we_run_them_all():
    assert len(_TESTS) == 13


@pytest.mark.parametrize("filename, name", _TESTS, ids=lambda v: v)
def test_v0_probing_test_passes_against_ours(filename, name):
    torch.manual_seed(0)
    _NAMESPACES[filename][name]()
