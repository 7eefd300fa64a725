"""Train the shipped induction model and write ``neurosurgeon/circuits/zoo/induction.{safetensors,json}``.

A two-layer attention-only GPT-2 (Elhage et al. 2021, "A Mathematical Framework for Transformer
Circuits"; Olsson et al. 2022, arXiv 2209.11895) learns to copy repeated random sequences
(:func:`neurosurgeon.circuits.zoo.induction_batch`). The MLPs stay in the architecture, so the
circuit graph reads a plain GPT-2, but have a hidden width of 1 and zero weights and biases,
frozen: they write exactly zero. The unembedding is its own matrix: tied to the token embedding,
the direct path would push every logit towards the current token, and the model does not learn
to copy in this budget. The loss is the cross-entropy of the next token at the positions whose
next token is a copy; the other tokens are random, with nothing to learn.

Left alone, the model learns the copy with several previous-token and induction heads that
share the work. So that one head per role carries it (a unique ground truth), once the copy is
learned a group penalty lambda * sum_h ||theta_h||^(1/2) on each head's parameters theta_h (its
query, key and value columns and biases and its rows of the output projection) joins the loss:
concave in the norm, it favours a few large heads over many small ones (the square-root
penalty of group bridge regression, Huang et al. 2009, Biometrika 96(2)), and the heads it
empties attend uniformly and write next to nothing.

Deterministic: torch's RNG (the initialisation) is seeded here, batch ``step`` is drawn from
``fold_in(split(key(0))[0], step)``, and torch runs deterministic algorithms on one thread.

Usage: ``python scripts/train_induction.py [--steps N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch
from safetensors.torch import save_model
from transformers import GPT2Config, GPT2LMHeadModel

from neurosurgeon.circuits.zoo import INDUCTION_FILES, induction_batch
from neurosurgeon.functional import random as nr

#: The GPT-2 config's arguments, written to induction.json (dropout off: the task is noise-free).
CONFIG = dict(n_layer=2, n_head=4, n_embd=64, n_inner=1, vocab_size=64, n_positions=32, activation_function="gelu_new",
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False, bos_token_id=0,
              eos_token_id=0)
LENGTH = CONFIG["n_positions"]
VOCAB = CONFIG["vocab_size"]
OUT = pathlib.Path(__file__).resolve().parents[1] / "neurosurgeon" / "circuits" / "zoo"


def copy_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, T - 1)`` bool: position t predicts a copied token (repeat <= t <= repeat + segment - 2)."""
    t = torch.arange(batch["input_ids"].shape[1] - 1)[None]
    return (t >= batch["repeat"][:, None]) & (t <= (batch["repeat"] + batch["segment"] - 2)[:, None])


def copy_accuracy(model, batch) -> float:
    with torch.no_grad():
        predicted = model(batch["input_ids"]).logits[:, :-1].argmax(-1)
    where = copy_positions(batch)
    return (predicted == batch["input_ids"][:, 1:])[where].float().mean().item()


def attention_only(model) -> None:
    """Zero the MLPs and freeze them, so they write zero through all of training."""
    for block in model.transformer.h:
        for p in block.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)


def head_norms(model) -> torch.Tensor:
    """``(layers, heads)``: the norm of each head's parameters (Q, K, V columns and biases, W_O rows)."""
    heads, width = model.config.n_head, model.config.n_embd
    d = width // heads
    rows = []
    for block in model.transformer.h:
        qkv = block.attn.c_attn.weight.view(width, 3, heads, d)  # Conv1D: (in, out), out = [q | k | v]
        bias = block.attn.c_attn.bias.view(3, heads, d)
        out = block.attn.c_proj.weight.view(heads, d, width)
        squares = qkv.square().sum((0, 1, 3)) + bias.square().sum((0, 2)) + out.square().sum((1, 2))
        rows.append(squares.sqrt())
    return torch.stack(rows)


def train(steps: int, *, batch_size: int = 64, lr: float = 3e-3, penalty: float = 3e-2, penalty_from: float = 0.25,
          seed: int = 0):
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**CONFIG))
    attention_only(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    # Cosine decay: a steady finish, so the last weights are the best ones.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    data_key, eval_key = nr.split(nr.key(seed), 2)
    held_out = induction_batch(eval_key, 512, LENGTH, vocab=VOCAB)
    start = time.perf_counter()
    for step in range(steps):
        batch = induction_batch(nr.fold_in(data_key, step), batch_size, LENGTH, vocab=VOCAB)
        logits = model(batch["input_ids"]).logits[:, :-1]
        where = copy_positions(batch)
        loss = torch.nn.functional.cross_entropy(logits[where], batch["input_ids"][:, 1:][where])
        total = loss
        if step >= penalty_from * steps:  # only once the copy is learned: from the start it stops the learning
            total = total + penalty * head_norms(model).sqrt().sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            model.eval()
            norms = " ".join(f"[{', '.join(f'{v:.2f}' for v in row)}]" for row in head_norms(model).tolist())
            print(f"step {step:5d}  loss {loss.item():.4f}  held-out copy accuracy {copy_accuracy(model, held_out):.4f}"
                  f"  head norms {norms}  ({time.perf_counter() - start:.0f} s)", flush=True)
            model.train()
    return model.eval(), copy_accuracy(model.eval(), held_out), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, accuracy, seconds = train(args.steps)
    if accuracy < 0.95:
        raise SystemExit(f"the model copies with accuracy {accuracy:.3f} only; train longer (--steps)")
    args.out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(args.out / INDUCTION_FILES[0]))
    (args.out / INDUCTION_FILES[1]).write_text(json.dumps(CONFIG, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"held-out copy accuracy {accuracy:.4f} after {args.steps} steps in {seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
