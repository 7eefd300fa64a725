"""Small trained models with a known circuit, shipped with the package: ground truth for circuit discovery.

**Induction** (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits", the
two-layer attention-only model; Olsson et al. 2022, "In-context Learning and Induction Heads",
arXiv 2209.11895). A row is random distinct tokens in which one segment comes twice; once a
token comes back, the next token is the one that followed it the first time. A two-layer
attention-only model copies it with two heads: a *previous-token head* in layer 0 writes, at
each position s, the token at s - 1; an *induction head* in layer 1 attends from the current
token to the position whose previous token equals it (its key reads the previous-token head's
output: K-composition) and copies the token found there. In the circuit graph the core is the
edge ``A0.{prev}->A1.{ind}.K``, with the token embedding reaching the previous-token head's value
and the induction head's query and value, and the induction head writing to ``Resid End``.

The shipped model (``zoo/induction.safetensors``, its ``GPT2Config`` arguments in
``zoo/induction.json``) is a GPT-2 of 2 layers, 4 heads, width 64, 64 tokens and 32 positions,
with its own unembedding (not tied to the token embedding). Its MLPs write zero: their hidden
width is 1 and their weights and biases are zero and were frozen in training, so they stay in
the graph, as writers of exact zeros, while the model is attention-only. It was trained by
``scripts/train_induction.py``: torch's RNG (the initialisation) seeded there, batch ``step``
from :func:`induction_batch` with key ``fold_in(split(key(0))[0], step)``, cross-entropy on the
positions whose next token is a copy, and, once the copy was learned, a group penalty on each
head's parameters that leaves one head per role (see the script). In the shipped weights the
previous-token head is ``A0.1`` and the induction head ``A1.3``; ``A0.2`` looks back a position
or two with a small weight, and the other heads are emptied (uniform attention, near-zero
writes). The tests find the heads from their attention patterns rather than from these names.

Example:
    >>> from neurosurgeon.circuits import circuit_graph
    >>> from neurosurgeon.circuits.zoo import induction_batch, induction_model
    >>> from neurosurgeon.functional import random as nr
    >>> model = induction_model()
    >>> batch = induction_batch(nr.key(0), 8, 32)
    >>> logits = model(batch["input_ids"]).logits            # (8, 32, 64)
    >>> rows = range(8)
    >>> bool((logits[rows, batch["positions"]].argmax(-1) == batch["answers"]).all())
    True
    >>> circuit_graph(model).num_edges
    110
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import torch

from ..functional import random as nr

__all__ = ["induction_config", "induction_model", "induction_batch", "INDUCTION_FILES"]

#: The shipped files under ``neurosurgeon/circuits/zoo/``: weights and the GPT-2 config's arguments.
INDUCTION_FILES = ("induction.safetensors", "induction.json")


def _zoo_file(name: str):
    return resources.files(__package__).joinpath("zoo", name)


@lru_cache(maxsize=1)
def _induction_arguments() -> dict:
    return json.loads(_zoo_file(INDUCTION_FILES[1]).read_text(encoding="utf-8"))


def induction_config():
    """The shipped model's ``GPT2Config`` (eager attention, so ``output_attentions=True`` gives
    the attention patterns)."""
    from transformers import GPT2Config

    return GPT2Config(**_induction_arguments(), attn_implementation="eager")


def induction_model():
    """The trained two-layer attention-only GPT-2 that copies in context (see the module
    docstring), in eval mode with its weights frozen.

    Returns:
        ``transformers.GPT2LMHeadModel`` (float32, CPU).
    """
    from safetensors.torch import load_model
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(induction_config())
    with resources.as_file(_zoo_file(INDUCTION_FILES[0])) as path:
        load_model(model, str(path), strict=True)
    return model.eval().requires_grad_(False)


def _positive_int(name: str, value, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def induction_batch(key: torch.Tensor, batch: int, length: int, *, vocab: int | None = None) -> dict[str, torch.Tensor]:
    """Random sequences with one repeated segment, for the induction task, drawn from ``key`` alone.

    Row i holds ``length`` distinct random tokens (the first entries of a random permutation of
    the vocabulary) except for one segment of ``segment[i]`` tokens that comes twice in a row:
    first at ``repeat[i] - segment[i]``, then at ``repeat[i]``. With ``segment = length // 2``
    and ``repeat = segment`` this is "the first half random, the second half the same tokens";
    the segment's length, uniform in ``[2, length // 2]``, and its start, uniform
    over where it fits, vary so that no fixed position or offset can stand in for induction.
    The next token is a copy at the positions ``t`` in ``[repeat, repeat + segment - 2]``: it is
    ``input_ids[t - segment + 1]``, the token after the current token's first occurrence. One of
    these positions per row, uniform, is the ``positions`` entry the circuit metrics read.

    The corrupted row (for resample ablation) is the row with the segment's first occurrence
    replaced by fresh tokens: the repeat has nothing earlier to copy, while every other position,
    the current token at ``positions`` included, is unchanged. The ``wrong`` token is the fresh
    token at the source position ``positions - segment + 1``: what copying the corrupted row
    would give, a token the clean row never holds.

    Args:
        key: PRNG key (:func:`neurosurgeon.functional.random.key`).
        batch: rows, >= 1.
        length: tokens per row, >= 4 (at most the shipped model's 32 positions for that model).
        vocab: token ids ``[0, vocab)``; default the shipped model's vocabulary.

    Returns:
        dict of int64 tensors: ``input_ids`` and ``corrupted`` ``(batch, length)``; ``answers``,
        ``wrong``, ``positions``, ``segment`` and ``repeat`` ``(batch,)``.

    Raises:
        ValueError: ``batch`` < 1, ``length`` < 4, or a vocabulary smaller than ``length`` (a
            row and its fresh tokens are distinct).
    """
    _positive_int("batch", batch, 1)
    _positive_int("length", length, 4)
    vocab = _induction_arguments()["vocab_size"] if vocab is None else vocab
    low, high = 2, length // 2
    _positive_int("vocab", vocab, length)
    k_tokens, k_segment, k_start, k_position = nr.split(key, 4)
    segment = low + nr.bits(k_segment, (batch,)) % (high - low + 1)
    start = nr.bits(k_start, (batch,)) % (length - 2 * segment + 1)
    repeat = start + segment
    # Position t reads entry t - start of a random permutation inside the segment, the same entry
    # again in its repeat, and a fresh entry (segment + t, or t - segment after the repeat) outside.
    t = torch.arange(length)[None]
    s, r = start[:, None], segment[:, None]
    index = torch.where(t < s, r + t, torch.where(t < s + r, t - s, torch.where(t < s + 2 * r, t - s - r, t - r)))
    tokens = torch.argsort(nr.bits(k_tokens, (batch, vocab)), dim=1, stable=True)
    ids = tokens.gather(1, index)
    positions = repeat + nr.bits(k_position, (batch,)) % (segment - 1)
    answers = ids.gather(1, positions[:, None] + 1)[:, 0]
    # The corrupted first occurrence: permutation entries past the ones the row uses.
    fresh = torch.where((t >= s) & (t < s + r), length - r + t - s, index)
    corrupted = tokens.gather(1, fresh)
    wrong = corrupted.gather(1, positions[:, None] + 1 - segment[:, None])[:, 0]
    return {"input_ids": ids, "corrupted": corrupted, "answers": answers, "wrong": wrong, "positions": positions,
            "segment": segment, "repeat": repeat}
