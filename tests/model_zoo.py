"""Tiny models for the model-level tests, built from configs with random weights (no downloads).

Each entry gives the model, a batch, the targets to mask, the training loss and the output
to compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import transformers
from transformers.pytorch_utils import Conv1D

transformers.logging.set_verbosity_error()


@dataclass
class Zoo:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[], dict[str, Any]]
    targets: Any
    loss: Callable[[nn.Module, dict], torch.Tensor]
    out: Callable[[nn.Module, dict], torch.Tensor]
    layer_types: tuple


def _hf_loss(model, batch):
    return model(**batch).loss


def _logits(model, batch):
    b = {k: v for k, v in batch.items() if k != "labels"}
    return model(**b).logits


def gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg)


def _gpt2_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (4, 12), generator=g)
    return {"input_ids": ids, "labels": ids}


def bert():
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=32, num_labels=3,
                                  attn_implementation="eager")
    return transformers.BertForSequenceClassification(cfg)


def _bert_batch():
    g = torch.Generator().manual_seed(2)
    return {"input_ids": torch.randint(0, 60, (4, 10), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}


def vit():
    cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=37, num_labels=3, attn_implementation="eager")
    return transformers.ViTForImageClassification(cfg)


def _image_batch(size):
    def make():
        g = torch.Generator().manual_seed(3)
        return {"pixel_values": torch.randn(4, 3, size, size, generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}
    return make


def resnet():
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    layer_type="basic", num_labels=3)
    return transformers.ResNetForImageClassification(cfg)


class TinyConv1dNet(nn.Module):
    """A plain torch 1-d CNN with batch norm and dropout."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                                      nn.Conv1d(8, 8, 3, padding=1, groups=2), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _conv1d_batch():
    g = torch.Generator().manual_seed(4)
    return {"x": torch.randn(6, 3, 20, generator=g), "y": torch.randint(0, 3, (6,), generator=g)}


def _ce(model, batch):
    return nn.functional.cross_entropy(model(batch["x"]), batch["y"])


ZOO = {
    "gpt2": Zoo("gpt2", gpt2, _gpt2_batch, ["transformer.h.*.attn.c_attn", "transformer.h.*.mlp.*", "lm_head"],
                _hf_loss, _logits, (Conv1D, nn.Linear)),
    "bert": Zoo("bert", bert, _bert_batch, ["bert.encoder.layer.*.attention.self.*", "**.intermediate.dense", "classifier"],
                _hf_loss, _logits, (nn.Linear,)),
    "vit": Zoo("vit", vit, _image_batch(16), [nn.Conv2d, "vit.layers.*.attention.?_proj", "vit.layers.*.mlp.*", "classifier"],
               _hf_loss, _logits, (nn.Conv2d, nn.Linear)),
    "resnet": Zoo("resnet", resnet, _image_batch(32), [nn.Conv2d, "classifier.*"], _hf_loss, _logits,
                  (nn.Conv2d, nn.Linear)),
    "conv1d": Zoo("conv1d", TinyConv1dNet, _conv1d_batch, [nn.Conv1d, "head"], _ce,
                  lambda m, b: m(b["x"]), (nn.Conv1d, nn.Linear)),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZOO[name].build()
