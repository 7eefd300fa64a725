"""The embedded demo: a seeded two-sub-task toy problem and a 2-layer GPT-2 trained on it.

Each example is four digits followed by a flag token that selects the operation::

    a b c d ADD   ->  (a + b) mod 10       sub-task A, "add"
    a b c d COPY  ->  d                    sub-task B, "copy"

GPT-2 reads the flag last, so the final position must route the right digits through the
right computation: modular addition of two early tokens for "add", a plain copy of the last
digit for "copy". The two operations share the embedding and the residual stream but need
different attention and MLP weights, which is what a subnetwork search should pull apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["Examples", "SyntheticTask", "make_demo_model", "train_model", "classify", "accuracy", "SUBTASKS"]

#: Names of the two sub-tasks, in flag order.
SUBTASKS = ("add", "copy")
N_DIGITS = 4
FLAG_TOKENS = (10, 11)
PAD_TOKEN = 12
VOCAB = 13


@dataclass
class Examples:
    """A labelled batch: token ids ``(N, T)``, attention mask ``(N, T)``, class labels ``(N,)``
    and the sub-task index of each example ``(N,)`` (an index into ``subtasks``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    subtask: torch.Tensor
    subtasks: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, index: torch.Tensor) -> "Examples":
        return Examples(self.input_ids[index], self.attention_mask[index], self.labels[index], self.subtask[index],
                        self.subtasks)

    def of_subtask(self, s: int) -> "Examples":
        return self.select(self.subtask == s)

    def to(self, device) -> "Examples":
        return Examples(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device),
                        self.subtask.to(device), self.subtasks)

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Mini-batches in a random order drawn from ``generator`` (in order when None)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            yield self.select(order[i : i + batch_size].to(self.labels.device))


class SyntheticTask:
    """Seeded generator of the add/copy problem (see the module docstring)."""

    subtasks = SUBTASKS
    num_labels = 10

    def __init__(self, seed: int):
        self.seed = seed

    def sample(self, n: int, *, split: str) -> Examples:
        """``n`` examples, half of each sub-task; ``split`` ("train", "test", "mask", "val") picks an independent stream."""
        g = torch.Generator().manual_seed(self.seed * 1000 + {"train": 1, "test": 2, "mask": 3, "val": 4}[split])
        digits = torch.randint(0, 10, (n, N_DIGITS), generator=g)
        subtask = torch.arange(n) % 2
        subtask = subtask[torch.randperm(n, generator=g)]
        labels = torch.where(subtask == 0, (digits[:, 0] + digits[:, 1]) % 10, digits[:, -1])
        flags = torch.tensor(FLAG_TOKENS)[subtask]
        ids = torch.cat([digits, flags[:, None]], dim=1)
        return Examples(ids, torch.ones_like(ids), labels, subtask, self.subtasks)


def make_demo_model(seed: int) -> nn.Module:
    """A 2-layer, 4-head, 64-wide GPT-2 sequence classifier over the task's 13 tokens."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=VOCAB, n_positions=8, n_embd=64, n_layer=2, n_head=4, n_inner=128, num_labels=10,
        pad_token_id=PAD_TOKEN, bos_token_id=None, eos_token_id=None,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    # Eager attention: the vmapped baselines batch the model over random masks.
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2ForSequenceClassification(config)
    return model


def classify(model: nn.Module, batch: Examples) -> torch.Tensor:
    """Class logits ``(N, C)`` of a sequence classifier."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).float().mean()


def train_model(model: nn.Module, task: SyntheticTask, *, steps: int, batch_size: int = 128, lr: float = 3e-3,
                progress) -> float:
    """Train ``model`` on both sub-tasks with AdamW; returns the final training loss.

    ``progress`` is a tqdm-like object factory (``progress(total=..., desc=...)``).
    """
    data = task.sample(steps * batch_size, split="train").to(next(model.parameters()).device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    loss_value = float("nan")
    with progress(total=steps, desc="train model") as bar:
        for step, batch in enumerate(data.batches(batch_size)):
            loss = nn.functional.cross_entropy(classify(model, batch), batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_value = loss.item()
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss_value:.3f}")
            bar.update(1)
    model.eval()
    return loss_value
