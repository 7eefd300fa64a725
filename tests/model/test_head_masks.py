"""Head masks on whole models: ``inject_masks(model, ns.attention_heads(model))`` on GPT-2 and
BERT removes whole heads, trains, saves and loads; ``masked_weights`` refuses unknown names."""

import pytest
import torch
import transformers

import neurosurgeon as ns
from neurosurgeon.functional import random as nr


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                                  attn_implementation="eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=50, max_position_embeddings=16, attn_implementation="eager",
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertModel(cfg).eval()


def _out(model, ids):
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("build, qkv_layer, n_units", [
    (_gpt2, "transformer.h.0.attn.c_attn", (3, 4)),
    (_bert, "encoder.layer.0.attention.self.query", (4,)),
])
def test_removing_one_head_equals_zeroing_its_weights(build, qkv_layer, n_units):
    model, ids = build(), torch.randint(0, 50, (2, 6))
    reference = build()
    layers = ns.inject_masks(model, ns.attention_heads(model), key=0, mask_init_value=1.0)
    assert tuple(layers[qkv_layer].weight_mask_params.shape) == n_units
    with torch.no_grad():
        layers[qkv_layer].weight_mask_params.view(-1)[1] = -1.0  # the query of head 1
        base = reference.get_submodule(qkv_layer)
        if isinstance(base, torch.nn.Linear):  # weight (h d, in): rows 8..15 are head 1 (d = 8); the bias is kept
            base.weight[8:16] = 0
        else:  # Conv1D weight (in, 3 h d): columns 8..15 are the query of head 1
            base.weight[:, 8:16] = 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_out(model, ids), _out(reference, ids))


def test_head_masks_train_save_and_load_on_gpt2(tmp_path):
    model, ids = _gpt2(), torch.randint(0, 50, (4, 8))
    ns.inject_masks(model, ns.attention_heads(model), strategy="hard_concrete", key=1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss + 1e-2 * ns.l0_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ns.save_masks(model, tmp_path / "heads.safetensors")
    twin = _gpt2()
    ns.inject_masks(twin, ns.attention_heads(twin), strategy="hard_concrete", key=2)
    ns.load_masks(twin, tmp_path / "heads.safetensors")
    model.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(_out(model, ids), _out(twin, ids))
    stats = ns.l0_statistics(model)
    assert stats["max_l0"] == sum(l.weight.numel() for l in ns.mask_layers(model).values())


def test_masked_weights_refuses_names_it_does_not_know():
    model = _gpt2()
    ns.inject_masks(model, ns.attention_heads(model), key=0)
    name = "transformer.h.0.attn.c_proj.weight_mask_params"
    theta = model.get_submodule("transformer.h.0.attn.c_proj").weight_mask_params
    ns.masked_weights(model, None, params={name: theta})  # a known name is fine
    with pytest.raises(ValueError, match="transformer.h.0.attn.c_proj.weight_mask_param'"):
        ns.masked_weights(model, nr.key(0), params={"transformer.h.0.attn.c_proj.weight_mask_param": theta})


def test_loading_head_masks_into_other_units_is_refused_naming_the_field(tmp_path):
    model = _gpt2()
    ns.inject_masks(model, ns.attention_heads(model), key=0)
    ns.save_masks(model, tmp_path / "heads.safetensors")
    twin = _gpt2()
    ns.inject_masks(twin, "**.attn.c_*", key=0, mask_unit="neuron")
    with pytest.raises(ValueError, match="mask_unit"):
        ns.load_masks(twin, tmp_path / "heads.safetensors")
