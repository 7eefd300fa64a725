"""The architecture table: every attention projection of each tiny model is found, and each
head pattern groups a weight's features the way the model's own attention code splits heads."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import einops
import pytest
import torch
import torch.nn as nn
import transformers as T
from transformers.pytorch_utils import Conv1D

from neurosurgeon.model.architectures import ARCHITECTURES, architecture_of, attention_heads
from neurosurgeon.model.select import match_names

T.logging.set_verbosity_error()

H, KV, L = 4, 2, 2  # attention heads, key/value heads (grouped-query), blocks
_LM = dict(num_hidden_layers=L, hidden_size=32, num_attention_heads=H, intermediate_size=64, vocab_size=100)
_GQA = dict(_LM, num_key_value_heads=KV, attn_implementation="eager")
_VIT = dict(_LM, image_size=32, patch_size=8)
_GPT2 = dict(n_layer=L, n_embd=32, n_head=H, vocab_size=100, attn_implementation="eager")


@dataclass
class Case:
    build: Callable[[], nn.Module]
    arch: str
    block: str  # path of block i
    heads: dict[str, tuple]  # projection path relative to a block -> reduced shape


_BERT = {"attention.self.query": (H,), "attention.self.key": (H,), "attention.self.value": (H,),
         "attention.output.dense": (H,)}
_LLAMA = {"self_attn.q_proj": (H,), "self_attn.k_proj": (KV,), "self_attn.v_proj": (KV,), "self_attn.o_proj": (H,)}
_VITH = {"attention.q_proj": (H,), "attention.k_proj": (H,), "attention.v_proj": (H,), "attention.o_proj": (H,)}

CASES = {
    "bert": Case(lambda: T.BertForSequenceClassification(T.BertConfig(**_LM, attn_implementation="eager")), "bert",
                 "bert.encoder.layer.{i}", _BERT),
    "bert-base": Case(lambda: T.BertModel(T.BertConfig(**_LM)), "bert", "encoder.layer.{i}", _BERT),
    "roberta": Case(lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**_LM)), "bert",
                    "roberta.encoder.layer.{i}", _BERT),
    "xlm-roberta": Case(lambda: T.XLMRobertaModel(T.XLMRobertaConfig(**_LM)), "bert", "encoder.layer.{i}", _BERT),
    "camembert": Case(lambda: T.CamembertModel(T.CamembertConfig(**_LM)), "bert", "encoder.layer.{i}", _BERT),
    "electra": Case(lambda: T.ElectraModel(T.ElectraConfig(**_LM, embedding_size=16)), "bert", "encoder.layer.{i}", _BERT),
    "distilbert": Case(
        lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(n_layers=L, dim=32, n_heads=H, hidden_dim=64, vocab_size=100)),
        "distilbert", "distilbert.transformer.layer.{i}",
        {"attention.q_lin": (H,), "attention.k_lin": (H,), "attention.v_lin": (H,), "attention.out_lin": (H,)},
    ),
    "gpt2": Case(lambda: T.GPT2LMHeadModel(T.GPT2Config(**_GPT2)), "gpt2", "transformer.h.{i}",
                 {"attn.c_attn": (3, H), "attn.c_proj": (H,)}),
    "gpt2-base": Case(lambda: T.GPT2Model(T.GPT2Config(**_GPT2)), "gpt2", "h.{i}", {"attn.c_attn": (3, H), "attn.c_proj": (H,)}),
    "gpt_neox": Case(lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**_LM, attn_implementation="eager")), "gpt_neox",
                     "gpt_neox.layers.{i}", {"attention.query_key_value": (3, H), "attention.dense": (H,)}),
    "vit": Case(lambda: T.ViTForImageClassification(T.ViTConfig(**_VIT)), "vit", "vit.layers.{i}", _VITH),
    "vit-base": Case(lambda: T.ViTModel(T.ViTConfig(**_VIT)), "vit", "layers.{i}", _VITH),
    "llama": Case(lambda: T.LlamaForCausalLM(T.LlamaConfig(**_GQA)), "llama", "model.layers.{i}", _LLAMA),
    "mistral": Case(lambda: T.MistralForCausalLM(T.MistralConfig(**_GQA)), "llama", "model.layers.{i}", _LLAMA),
    "qwen2": Case(lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**_GQA)), "llama", "model.layers.{i}", _LLAMA),
    "qwen3": Case(lambda: T.Qwen3Model(T.Qwen3Config(**_GQA, head_dim=16)), "llama", "layers.{i}", _LLAMA),
    # head_dim 16 != hidden_size / heads: d must come from the weight, not the hidden size.
    "gemma": Case(lambda: T.GemmaForCausalLM(T.GemmaConfig(**_GQA, head_dim=16)), "llama", "model.layers.{i}", _LLAMA),
}


@functools.cache
def model(case: str) -> nn.Module:
    torch.manual_seed(0)
    return CASES[case].build().eval()


def _expected(case: str) -> dict[str, tuple]:
    c = CASES[case]
    return {f"{c.block.format(i=i)}.{p}": shape for i in range(L) for p, shape in c.heads.items()}


def _members(shape, pattern, sizes, index) -> torch.Tensor:
    """Boolean mask of the weight entries that the head-mask entry ``index`` sums over."""
    w = torch.zeros(shape, requires_grad=True)
    einops.reduce(w, pattern, "sum", **sizes)[index].backward()
    return w.grad.bool()


@pytest.mark.parametrize("case", CASES)
def test_finds_every_attention_projection_and_reduces_it_to_heads(case):
    m = model(case)
    heads = attention_heads(m)
    expected = _expected(case)
    assert set(heads) == set(expected) and len(heads) == len(CASES[case].heads) * L
    modules = dict(m.named_modules())
    for name, (pattern, sizes) in heads.items():
        assert type(modules[name]) in (nn.Linear, Conv1D)
        reduced = einops.reduce(modules[name].weight, pattern, "sum", **sizes)
        assert tuple(reduced.shape) == expected[name], name
        # Each head owns an equal, disjoint share of the weight.
        counts = einops.reduce(torch.ones_like(modules[name].weight), pattern, "sum", **sizes)
        assert torch.all(counts == modules[name].weight.numel() / reduced.numel())


@pytest.mark.parametrize("case", ["gpt2", "bert"])
def test_heads_are_found_the_same_after_masks_are_injected(case):
    import neurosurgeon as ns

    m = model(case)
    before = attention_heads(m)
    ns.inject_masks(m, list(before), strategy="continuous_sparsification", key=0)
    assert attention_heads(m) == before


@pytest.mark.parametrize("case", CASES)
def test_architecture_row_locates_blocks_attention_and_mlp(case):
    m, c = model(case), CASES[case]
    arch = architecture_of(m)
    assert arch is ARCHITECTURES[c.arch] and architecture_of(m.config) is arch
    modules = dict(m.named_modules())
    blocks = match_names(modules, arch.layers)
    assert blocks == [c.block.format(i=i) for i in range(L)]
    for b in blocks:
        assert f"{b}.{arch.attention}" in modules and f"{b}.{arch.mlp}" in modules
    owners = {n: [b for b in blocks if n.startswith(f"{b}.{arch.attention}.")] for n in attention_heads(m)}
    assert all(len(v) == 1 for v in owners.values())


def test_model_types_are_served_by_one_row_each():
    types = [t for a in ARCHITECTURES.values() for t in a.model_types]
    assert len(types) == len(set(types))
    assert all(name == a.name for name, a in ARCHITECTURES.items())


# --- fused projections: slice heads as the model's own attention code does -----------------

E, D = 32, 32 // H


def _gpt2_columns(part, head):
    # GPT2Attention: c_attn(x).split(E, dim=2) -> q, k, v; each .view(..., H, D)
    return slice(part * E + head * D, part * E + (head + 1) * D)


def _neox_rows(part, head):
    # GPTNeoXAttention: query_key_value(x).view(..., H, 3 * D).chunk(3, dim=-1) -> q, k, v
    return slice(head * 3 * D + part * D, head * 3 * D + (part + 1) * D)


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize("head", [0, 2])
@pytest.mark.parametrize("case", ["gpt2", "gpt_neox"])
def test_fused_qkv_pattern_groups_features_by_the_models_head_split(case, head, part):
    name, (pattern, sizes) = next((n, s) for n, s in attention_heads(model(case)).items() if "c_attn" in n or "query_key_value" in n)
    w = torch.rand(dict(model(case).named_modules())[name].weight.shape) + 0.1
    if case == "gpt2":
        w[:, _gpt2_columns(part, head)] = 0  # Conv1D weight is (in, out)
    else:
        w[_neox_rows(part, head), :] = 0  # Linear weight is (out, in)
    reduced = einops.reduce(w, pattern, "sum", **sizes)
    assert reduced.shape == (3, H)
    assert reduced[part, head] == 0
    assert (reduced != 0).sum() == 3 * H - 1


def _attentions(m, ids):
    with torch.no_grad():
        return torch.stack(m(ids, output_attentions=True).attentions)  # (layer, batch, head, q, k)


@pytest.mark.parametrize(
    "case, proj, index, changed",
    [
        ("gpt2", "attn.c_attn", (0, 1), {1}),  # query of head 1
        ("gpt2", "attn.c_attn", (1, 3), {3}),  # key of head 3
        ("gpt_neox", "attention.query_key_value", (0, 2), {2}),
        ("gpt_neox", "attention.query_key_value", (1, 0), {0}),
        ("bert", "attention.self.key", (2,), {2}),
        ("llama", "self_attn.q_proj", (3,), {3}),
        # grouped-query: key head 1 serves query heads 2 and 3
        ("llama", "self_attn.k_proj", (1,), {2, 3}),
    ],
)
def test_zeroing_a_head_entry_changes_only_that_heads_attention(case, proj, index, changed):
    torch.manual_seed(0)
    m = CASES[case].build().eval()
    ids = torch.randint(0, 100, (2, 6))
    before = _attentions(m, ids)
    name = f"{CASES[case].block.format(i=0)}.{proj}"
    pattern, sizes = attention_heads(m)[name]
    layer = dict(m.named_modules())[name]
    members = _members(layer.weight.shape, pattern, sizes, index)
    with torch.no_grad():
        layer.weight[members] = 0
    diff = (_attentions(m, ids)[0] - before[0]).abs().amax(dim=(0, 2, 3))  # per head of block 0
    assert {h for h in range(H) if diff[h] > 1e-4} == changed
    assert all(diff[h] == 0 for h in range(H) if h not in changed)


@pytest.mark.parametrize(
    "case, proj",
    [("gpt2", "attn.c_proj"), ("gpt_neox", "attention.dense"), ("llama", "self_attn.o_proj"),
     ("bert", "attention.output.dense"), ("distilbert", "attention.out_lin")],
)
def test_output_projection_head_is_that_heads_slice_of_the_attention_output(case, proj):
    # The attention code reshapes (..., h, d) to (..., h * d) before the output projection, so
    # zeroing head j's weight entries must equal zeroing features [j * d, (j + 1) * d) of its input.
    torch.manual_seed(0)
    m = CASES[case].build().eval()
    ids = torch.randint(0, 100, (2, 6))
    name = f"{CASES[case].block.format(i=1)}.{proj}"
    pattern, sizes = attention_heads(m)[name]
    layer = dict(m.named_modules())[name]
    j, d = 2, E // H

    def drop_head(module, args):
        x = args[0].clone()
        x[..., j * d : (j + 1) * d] = 0
        return (x,)

    handle = layer.register_forward_pre_hook(drop_head)
    with torch.no_grad():
        want = m(ids)[0]
    handle.remove()
    members = _members(layer.weight.shape, pattern, sizes, (j,))
    with torch.no_grad():
        full = m(ids)[0]
        layer.weight[members] = 0
        got = m(ids)[0]
    assert not torch.allclose(want, full)
    torch.testing.assert_close(got, want)


# --- user templates, forced rows and errors --------------------------------------------------

class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.o, self.act = nn.Linear(8, 16), nn.Linear(16, 8), nn.ReLU()


def test_templates_serve_a_model_in_no_row():
    spec = {"q": ("(h d) i -> h", {"h": 4}), "o": ("o (h d) -> h", {"h": 4})}
    heads = attention_heads(Toy(), templates=spec)
    assert heads == spec
    toy = Toy()
    assert einops.reduce(toy.q.weight, heads["q"][0], "sum", **heads["q"][1]).shape == (4,)
    # A glob matching other module types keeps only the Linear / Conv1D ones.
    assert list(attention_heads(toy, templates={"*": ("(h d) i -> h", {"h": 8})})) == ["q", "o"]


def test_forced_architecture_and_config_fallback():
    class Wrapped(nn.Module):
        def __init__(self, inner, config):
            super().__init__()
            self.inner, self.config = inner, config

    gpt2 = Wrapped(T.GPT2Model(T.GPT2Config(**_GPT2)), SimpleNamespace(model_type="custom", num_attention_heads=H))
    with pytest.raises(ValueError, match="custom"):
        attention_heads(gpt2)
    forced = attention_heads(gpt2, architecture="gpt2")
    assert forced["inner.h.1.attn.c_attn"] == ("i (qkv h d) -> qkv h", {"h": H, "qkv": 3})
    assert attention_heads(gpt2, architecture=ARCHITECTURES["gpt2"]) == forced
    # No num_key_value_heads in the config: keys and values have one head per query head.
    llama = Wrapped(T.LlamaModel(T.LlamaConfig(**dict(_LM, num_key_value_heads=H))),
                    SimpleNamespace(model_type="llama", num_attention_heads=H))
    assert attention_heads(llama)["inner.layers.0.self_attn.k_proj"][1] == {"h": H}


def test_errors_name_the_cause():
    with pytest.raises(ValueError, match=r"'t5'.*gpt2.*templates="):
        architecture_of(T.T5Config())
    with pytest.raises(ValueError, match="'custom'"):
        attention_heads(SimpleNamespace(config=SimpleNamespace(model_type="custom")))
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        attention_heads(model("gpt2"), architecture="nope")
    with pytest.raises(ValueError, match="matches no"):
        attention_heads(model("gpt2"), architecture="llama")  # a row whose globs miss the model
    with pytest.raises(ValueError, match="matches no"):
        attention_heads(Toy(), templates={"k": ("(h d) i -> h", {"h": 4})})
    with pytest.raises(ValueError, match="matches no"):
        attention_heads(Toy(), templates={"act": ("(h d) i -> h", {"h": 4})})  # exists, but is no Linear
    with pytest.raises(ValueError, match="does not fit 'q'"):
        attention_heads(Toy(), templates={"q": ("(h d) i -> h", {"h": 3})})
    with pytest.raises(ValueError, match="two attention templates"):
        attention_heads(Toy(), templates={"*": ("(h d) i -> h", {"h": 4}), "q": ("(h d) i -> h", {"h": 4})})
    with pytest.raises(ValueError, match="not both"):
        attention_heads(Toy(), architecture="gpt2", templates={"q": ("(h d) i -> h", {"h": 4})})
