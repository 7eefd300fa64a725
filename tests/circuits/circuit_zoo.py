"""Tiny models of every circuit family, built from configs with random weights (no downloads)."""

import torch
from transformers import (
    BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, GPT2Model, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 50
_SMALL = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB)


def _gpt2(**kw):
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=16,
                                      bos_token_id=0, eos_token_id=0, **kw))


FAMILIES = {
    "gpt2": _gpt2,
    "gpt2_base": lambda: GPT2Model(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=16,
                                              bos_token_id=0, eos_token_id=0)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, bos_token_id=0, eos_token_id=0, **_SMALL)),
    "gpt_neox_sequential": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, use_parallel_residual=False,
                                                                    bos_token_id=0, eos_token_id=0, **_SMALL)),
    "llama_gqa": lambda: LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_key_value_heads=2, attention_bias=True,
                                                      bos_token_id=0, eos_token_id=0, **_SMALL)),
}
PRE_NORM = list(FAMILIES)


def bert():
    return BertModel(BertConfig(num_hidden_layers=2, **_SMALL))


def build(name: str, *, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    model = bert() if name == "bert" else FAMILIES[name]()
    with torch.no_grad():  # non-zero biases everywhere, so a misplaced bias cannot hide
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
    return model.to(dtype).eval()


def reference_output(model, ids):
    out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def ids(batch=3, positions=7, seed=1):
    return torch.randint(VOCAB, (batch, positions), generator=torch.Generator().manual_seed(seed))
