"""Residual-stream hooks and subnetwork probing: cache shapes and stream identities on each
architecture, removable hooks, configuration errors, the L0 term, logits without labels,
image inputs and probe baselines over random subnetworks."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import transformers as T
from hypothesis import given, settings, strategies as st

import neurosurgeon as ns
from neurosurgeon.functional import random as nr
from neurosurgeon.model.architectures import Architecture

T.logging.set_verbosity_error()

B, S, HID, FF, V = 3, 5, 16, 24, 40  # batch, tokens, hidden width, MLP width, vocabulary
_LM = dict(num_hidden_layers=2, hidden_size=HID, num_attention_heads=2, intermediate_size=FF, vocab_size=V,
           attn_implementation="eager")

BUILD = {
    "gpt2": lambda: T.GPT2Model(T.GPT2Config(n_layer=2, n_embd=HID, n_head=2, n_inner=FF, vocab_size=V,
                                             attn_implementation="eager")),
    "bert": lambda: T.BertModel(T.BertConfig(**_LM)),
    "ernie": lambda: T.ErnieModel(T.ErnieConfig(**_LM)),
    "distilbert": lambda: T.DistilBertModel(T.DistilBertConfig(n_layers=2, dim=HID, n_heads=2, hidden_dim=FF,
                                                               vocab_size=V)),
    "gpt_neox": lambda: T.GPTNeoXModel(T.GPTNeoXConfig(**_LM)),
    "gpt_neox_sequential": lambda: T.GPTNeoXModel(T.GPTNeoXConfig(**_LM, use_parallel_residual=False)),
    # 16 x 16 pixels in 8 x 8 patches: 4 patches and [CLS], so 5 tokens as for text.
    "vit": lambda: T.ViTModel(T.ViTConfig(**_LM, image_size=16, patch_size=8), add_pooling_layer=False),
    "llama": lambda: T.LlamaModel(T.LlamaConfig(**_LM, num_key_value_heads=1)),
}
POST_NORM = {"bert": lambda m, i: m.encoder.layer[i].attention.output.LayerNorm,
             "ernie": lambda m, i: m.encoder.layer[i].attention.output.LayerNorm,
             "distilbert": lambda m, i: m.transformer.layer[i].sa_layer_norm}
ALL = ("attn_update", "attn_stream", "mlp_update", "mlp_stream")


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BUILD[name]().eval()


def inputs(name: str, batch: int = B, tokens: int = S) -> dict:
    g = torch.Generator().manual_seed(7)
    if name == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(0, V, (batch, tokens), generator=g)}


def resid_config(layers=(0, 1), **kw) -> ns.ResidualUpdateModelConfig:
    fields = dict(mlp=True, attn=True, updates=True, stream=True) | kw
    return ns.ResidualUpdateModelConfig("auto", list(layers), fields.pop("mlp"), fields.pop("attn"), **fields)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- ResidualUpdateModel ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(BUILD))
def test_cache_holds_batch_tokens_hidden_for_every_key_and_block(name):
    with ns.ResidualUpdateModel(resid_config(), build(name)) as m:
        m(**inputs(name))
    assert set(m.vector_cache) == {f"{k}_{i}" for k in ALL for i in (0, 1)}
    # Every example, not example 0: a block returning a tensor must not be indexed with [0].
    assert {k: tuple(v.shape) for k, v in m.vector_cache.items()} == {k: (B, S, HID) for k in m.vector_cache}


@pytest.mark.parametrize("name", list(BUILD))
def test_updates_add_up_to_the_models_own_hidden_states(name):
    model = build(name)
    with ns.ResidualUpdateModel(resid_config(layers=[0]), model) as m:
        out = m(**inputs(name), output_hidden_states=True)
    c, x, y = m.vector_cache, out.hidden_states[0], out.hidden_states[1]
    mid = x + c["attn_update_0"]
    if name in POST_NORM:
        mid = POST_NORM[name](model, 0)(mid)
    torch.testing.assert_close(c["attn_stream_0"], mid)
    torch.testing.assert_close(c["mlp_stream_0"], y)
    if name not in POST_NORM:
        torch.testing.assert_close(c["attn_stream_0"] + c["mlp_update_0"], y)
    assert not torch.allclose(c["attn_update_0"], c["mlp_update_0"])


@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 4), tokens=st.integers(1, 6), name=st.sampled_from(["gpt2", "llama", "bert"]))
def test_cache_shape_follows_the_input_shape(batch, tokens, name):
    with ns.ResidualUpdateModel(resid_config(layers=[1], attn=False), _cached(name)) as m:
        m(**inputs(name, batch, tokens))
    assert tuple(m.vector_cache["mlp_stream_1"].shape) == (batch, tokens, HID)


@functools.cache
def _cached(name):
    return build(name)


@pytest.mark.parametrize("use_context", [True, False])
def test_removing_hooks_restores_the_model(use_context):
    model = build("gpt2")
    before, x = _hook_count(model), inputs("gpt2")
    want = model(**x).last_hidden_state
    m = ns.ResidualUpdateModel(resid_config(), model)
    assert _hook_count(model) > before
    if use_context:
        with m:
            pass
    else:
        m.remove()
        m.remove()  # a second remove is a no-op
    assert _hook_count(model) == before and m.hooks == []
    m.vector_cache.clear()
    torch.testing.assert_close(m(**x).last_hidden_state, want)
    assert m.vector_cache == {}


def test_a_deep_copy_records_into_its_own_cache_and_removes_its_own_hooks():
    m = ns.ResidualUpdateModel(resid_config(), build("gpt2"))
    twin = copy.deepcopy(m)
    twin(**inputs("gpt2"))
    assert m.vector_cache == {} and len(twin.vector_cache) == 8
    twin.remove()
    assert _hook_count(twin.wrapped_model) == 0 and _hook_count(m.wrapped_model) > 0


def test_only_the_configured_keys_are_recorded():
    with ns.ResidualUpdateModel(resid_config(layers=[1], mlp=False, updates=False), build("llama")) as m:
        m(**inputs("llama"))
    assert list(m.vector_cache) == ["attn_stream_1"]


def test_user_templates_hook_a_model_in_no_row():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix, self.ff = nn.Linear(HID, HID), nn.Linear(HID, HID)

        def forward(self, x):
            x = x + self.mix(x)
            return x + self.ff(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    arch = Architecture("toy", (), layers="blocks.*", attention="mix", mlp="ff", heads={})
    net, x = Net(), torch.randn(B, S, HID)
    with ns.ResidualUpdateModel(resid_config(layers=[1]), net, architecture=arch) as m:
        y = m(x)
    torch.testing.assert_close(m.vector_cache["mlp_stream_1"], y)
    torch.testing.assert_close(m.vector_cache["attn_stream_1"] + m.vector_cache["mlp_update_1"], y)


@pytest.mark.parametrize(
    "config, match",
    [
        (resid_config(layers=[2]), r"target_layers has \[2\].*allowed 0\.\.1"),
        (resid_config(layers=[]), "target_layers must be a non-empty list"),
        (resid_config(mlp=False, attn=False), "mlp and config.attn are both False"),
        (resid_config(updates=False, stream=False), "updates and config.stream are both False"),
        (ns.ResidualUpdateModelConfig("t5", [0], True, True), r"model_type is 't5'; allowed: 'auto', 'gpt'"),
        (ns.ResidualUpdateModelConfig("gpt", [0], True, True), r"'gpt'.*'gpt2'.*'bert' \(BertModel"),
    ],
)
def test_bad_configuration_raises_naming_the_field_and_hooks_nothing(config, match):
    model = build("bert")
    before = _hook_count(model)
    with pytest.raises(ValueError, match=match):
        ns.ResidualUpdateModel(config, model)
    assert _hook_count(model) == before


def test_config_round_trips_through_json(tmp_path):
    config = ns.ResidualUpdateModelConfig("gpt", [0, 3], True, False, updates=False, stream=True)
    config.save_pretrained(tmp_path)
    back = ns.ResidualUpdateModelConfig.from_pretrained(tmp_path)
    fields = ("model_type", "target_layers", "mlp", "attn", "updates", "stream")
    assert [getattr(back, f) for f in fields] == ["gpt", [0, 3], True, False, False, True]


# --- SubnetworkProbe -------------------------------------------------------------------------

MASKED = {"gpt2": "h.0.mlp.c_fc", "bert": "encoder.layer.0.intermediate.dense", "vit": "layers.0.mlp.fc1",
          "llama": "layers.0.mlp.up_proj"}


def probe_config(name="gpt2", *, l0_lambda=1e-8, add_l0=True, freeze_base=True, probe_vectors="mlp_stream_1",
                 labeling="sequence", n_classes=2, intermediate_size=-1, resid=None):
    circuit = ns.CircuitConfig("hard_concrete", {"mask_init_percentage": 0.9}, [MASKED[name]], freeze_base=freeze_base,
                               add_l0=add_l0, l0_lambda=l0_lambda, key=0)
    return ns.SubnetworkProbeConfig(probe_vectors, n_classes, circuit, resid or resid_config(layers=[1], attn=False),
                                    intermediate_size=intermediate_size, labeling=labeling)


def make_probe(name="gpt2", **kw) -> ns.SubnetworkProbe:
    torch.manual_seed(0)
    return ns.SubnetworkProbe(probe_config(name, **kw), build(name))


LAST = torch.zeros(B, S, dtype=torch.bool)
LAST[:, -1] = True
LABELS = torch.tensor([0, 1, 1])


def test_loss_includes_l0_lambda_times_l0_while_training():
    x = inputs("gpt2")
    losses = {}
    for lam in (1e-8, 1e3):
        probe = make_probe(l0_lambda=lam).train()
        out = probe(**x, labels=LABELS, token_mask=LAST)
        losses[lam] = out.loss
        l0 = probe.circuit_model.l0_penalty()
        torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, LABELS) + lam * l0)
    assert l0 > 0
    torch.testing.assert_close(losses[1e3] - losses[1e-8], (1e3 - 1e-8) * l0)


def test_a_continuous_sparsification_probe_step_computes_one_sigmoid_per_theta():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Sigmoids(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Sigmoids.count += func.overloadpacket.__name__ == "sigmoid"
            return func(*args, **(kwargs or {}))

    circuit = ns.CircuitConfig("continuous_sparsification", {"mask_init_value": 0.5}, [MASKED["gpt2"]], key=0)
    torch.manual_seed(0)
    probe = ns.SubnetworkProbe(ns.SubnetworkProbeConfig("mlp_stream_1", 2, circuit, resid_config(layers=[1], attn=False)),
                               build("gpt2")).train()
    with Sigmoids():  # the L0 term sums the mask the forward made: no second sigmoid over theta
        out = probe(**inputs("gpt2"), labels=LABELS, token_mask=LAST)
        out.loss.backward()
    assert Sigmoids.count == 1
    l0 = probe.circuit_model.l0_penalty()
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, LABELS) + circuit.l0_lambda * l0)


def test_no_l0_term_without_add_l0_or_in_eval_mode():
    x = inputs("gpt2")
    probe = make_probe(l0_lambda=1e3, add_l0=False).train()
    out = probe(**x, labels=LABELS, token_mask=LAST)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, LABELS))
    probe = make_probe(l0_lambda=1e3).eval()
    out = probe(**x, labels=LABELS, token_mask=LAST)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, LABELS))


def test_without_labels_the_probe_returns_logits():
    probe = make_probe(n_classes=3).eval()
    out = probe(**inputs("gpt2"), token_mask=LAST)
    assert out.loss is None and out.logits.shape == (B, 3)
    (logits,) = probe(**inputs("gpt2"), token_mask=LAST, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    loss, logits = probe(**inputs("gpt2"), labels=LABELS, token_mask=LAST, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(logits, LABELS))
    # The logits are the probe applied to the marked vectors of the recorded stream.
    stream = probe.wrapped_model.vector_cache["mlp_stream_1"]
    torch.testing.assert_close(logits, probe.probe(stream[:, -1]))


def test_token_labeling_reads_every_marked_token_and_drops_padding():
    probe = make_probe(labeling="token", intermediate_size=8).eval()
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[0, :2], mask[1, 3], mask[2, :] = True, True, True  # 2 + 1 + 5 tokens
    labels = torch.full((B, S), -1)
    labels[0, :2], labels[1, 0], labels[2, :] = 1, 0, 1
    out = probe(**inputs("gpt2"), labels=labels, token_mask=mask)
    assert out.logits.shape == (8, 2) and out.labels.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    assert probe(**inputs("gpt2")).logits.shape == (B * S, 2)  # token labeling: every token by default


@pytest.mark.parametrize("name", ["vit", "bert", "llama"])
def test_probe_trains_mask_and_probe_on_any_input_kind(name):
    probe = make_probe(name).train()
    probe(**inputs(name), labels=LABELS, token_mask=torch.eye(B, S, dtype=torch.bool)).loss.backward()
    grads = {n: p.grad for n, p in probe.named_parameters() if p.requires_grad}
    assert set(grads) == {f"wrapped_model.wrapped_model.wrapped_model.{MASKED[name]}.weight_mask_params",
                          "probe.0.weight", "probe.0.bias"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(freeze_base=False), r"freeze_base is False.*allowed: True"),
        (dict(probe_vectors="mlp_stream_7"), r"probe_vectors is 'mlp_stream_7'; config.resid_config records \['mlp_update_1', 'mlp_stream_1'\]"),
        (dict(probe_vectors="attn_update_1"), r"probe_vectors is 'attn_update_1'"),
        (dict(labeling="word"), r"labeling must be one of \['sequence', 'token'\], got 'word'"),
        (dict(n_classes=1), r"n_classes must be an int >= 2, got 1"),
        (dict(intermediate_size=0), r"intermediate_size.*>= 1, got 0"),
        (dict(resid=resid_config(layers=[0, 1], attn=False)), r"target_layers is \[0, 1\].*one index"),
        (dict(resid=resid_config(layers=[1])), r"mlp=True, attn=True.*exactly one"),
        (dict(resid=resid_config(layers=[5], attn=False), probe_vectors="mlp_stream_5"), r"target_layers has \[5\]"),
    ],
)
def test_bad_probe_configuration_raises_at_construction_and_masks_nothing(kw, match):
    model = build("gpt2")
    with pytest.raises(ValueError, match=match):
        ns.SubnetworkProbe(probe_config(**kw), model)
    assert not ns.mask_layers(model) and _hook_count(model) == 0


@pytest.mark.parametrize(
    "call, match",
    [
        (dict(labels=LABELS), "token_mask is required with labeling='sequence'"),
        (dict(labels=LABELS, token_mask=LAST[:, :3]), r"token_mask must be a \(batch, tokens\) = \(3, 5\)"),
        (dict(labels=LABELS, token_mask=torch.ones(B, S, dtype=torch.bool)), r"exactly one.*\[5, 5, 5\]"),
        (dict(labels=LABELS[:2], token_mask=LAST), "labels has 2 labels for 3 marked tokens"),
    ],
)
def test_bad_forward_arguments_raise_naming_the_argument(call, match):
    probe = make_probe().eval()
    with pytest.raises(ValueError, match=match):
        probe(**inputs("gpt2"), **call)
    with pytest.raises(ValueError, match="no model inputs"):
        probe(labels=LABELS, token_mask=LAST)


def test_probe_config_round_trips_through_json(tmp_path):
    probe_config(labeling="token", intermediate_size=4).save_pretrained(tmp_path)
    back = ns.SubnetworkProbeConfig.from_pretrained(tmp_path)
    assert (back.probe_vectors, back.labeling, back.intermediate_size) == ("mlp_stream_1", "token", 4)
    assert back.circuit_config.target_layers == [MASKED["gpt2"]] and back.resid_config.target_layers == [1]


# --- baselines over random subnetworks ------------------------------------------------------

def test_baselines_equal_separate_evaluations_on_sampled_masks():
    probe = make_probe().eval()
    probe.wrapped_model.vector_cache["kept"] = torch.ones(1)
    x, keys = inputs("gpt2"), nr.split(nr.key(3), 4)
    acc = probe.evaluate_baselines(keys, labels=LABELS, token_mask=LAST, **x)
    assert acc.shape == (4,) and acc.dtype == torch.float32
    assert list(probe.wrapped_model.vector_cache) == ["kept"]
    base = probe.circuit_model.wrapped_model
    for k, a in zip(keys, acc):
        state = ns.masked_weights(base, k, ablation="randomly_sampled")
        ns.run_masked(base, state, **x)
        logits = probe.probe(probe.wrapped_model.vector_cache["mlp_stream_1"][:, -1])
        assert a == (logits.argmax(-1) == LABELS).float().mean()


def test_baselines_need_labels():
    with pytest.raises(ValueError, match="labels is None"):
        make_probe().evaluate_baselines(nr.split(nr.key(0), 2), labels=None, token_mask=LAST, **inputs("gpt2"))
