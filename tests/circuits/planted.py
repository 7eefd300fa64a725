"""Planted circuits: GPT-2 models whose weights are set by hand so their circuit is known exactly,
ground truth in the spirit of Tracr's compiled transformers (Lindner et al. 2023, arXiv
2301.05062), on which ACDC scores discovery by ROC-AUC over edges (Conmy et al. 2023, arXiv
2304.14997, Sec. 4).

The task: a prompt ``[BOS, b1, b2, SEP]`` of two bit tokens; the answer at the last position is
``gate(b1, b2)`` (token ``"1"`` or ``"0"``). Every feature has its own coordinate of the residual
stream (width 16; norms are identities, so nothing mixes the coordinates):

| coordinates | written by                  | holds                                  |
|-------------|-----------------------------|----------------------------------------|
| 0-3         | the token embedding         | the token, one-hot                     |
| 4-7         | the position embedding      | the position, one-hot                  |
| 8 (S1)      | the head that reads bit 1   | +-1: bit 1 at the last position        |
| 9 (S2)      | the head that reads bit 2   | +-1: bit 2                             |
| 10 (OUT)    | the gate MLP                | the logit difference ``"1"`` - ``"0"`` |
| 11-15       | distractors                 | real but unread content                |

The circuit: the bit-1 head's query reads the last position, its key every position, so it
attends to position 1; its value maps the token there to +1 (``"1"``) or -1 (anything else) and its
output writes that to S1 (the bit-2 head likewise, from position 2, to S2). The gate MLP reads S1
and S2 through one ReLU unit, ``OUT = 2 relu(S1 + S2 + c) - 1`` with c = +1 for OR and -1 for
AND, and the unembedding reads OUT alone (``"1"`` gets +OUT, ``"0"`` gets -OUT, every other token 0).
The attention is sharp but not saturated (the attended position scores ``SHARPNESS`` above the
others), so the first-order scores of the query and key edges stay non-zero.

Every other head and MLP is a distractor that computes something real and writes it to the
coordinates 11-15, which no circuit reader's weights touch: a previous-token head (at the last
position it copies bit 2), a head attending uniformly (the mean bit), a head re-reading S1 or a
distractor's coordinate, a head that attends and reads but whose output projection is zero,
and an MLP computing ``|S1 - S2|``. So under zero ablation every edge outside the circuit carries
nothing the answer depends on, and each circuit edge is needed (removing a query or key edge
flattens the attention, which the -1 the prompt's other tokens carry pulls below the gate's
threshold; removing a value or MLP edge loses a bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

BOS, ZERO, ONE, SEP = 0, 1, 2, 3
VOCAB, POSITIONS, WIDTH, HEADS = 4, 4, 16, 4
HEAD_DIM = WIDTH // HEADS
TOK, POS, S1, S2, OUT = 0, 4, 8, 9, 10
JUNK = (11, 12, 13, 14, 15)
#: The attended position's score above the others: attention weight e^6 / (e^6 + 3) ~ 0.993.
SHARPNESS = 6.0
GATES = {"or": lambda a, b: a | b, "and": lambda a, b: a & b}
#: The gate unit's bias c in OUT = 2 relu(S1 + S2 + c) - 1: OUT > 0 exactly when the gate is true.
_GATE_BIAS = {"or": 1.0, "and": -1.0}


@dataclass(frozen=True)
class Planted:
    """A planted model, its graph's embedding choice and the circuit it computes.

    Attributes:
        model: the GPT-2 model (eval mode, identity norms).
        gate: ``"or"`` or ``"and"``.
        embeddings: the ``circuit_graph`` embeddings choice the edge names use.
        edges: the planted circuit's edge names.
    """

    model: GPT2LMHeadModel
    gate: str
    embeddings: str
    edges: tuple[str, ...]

    def task(self) -> dict[str, torch.Tensor]:
        """All four prompts with their right and wrong answers."""
        bits = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
        tokens = torch.where(bits.bool(), ONE, ZERO)
        ids = torch.cat([torch.full((4, 1), BOS), tokens, torch.full((4, 1), SEP)], dim=1)
        truth = GATES[self.gate](bits[:, 0], bits[:, 1]).bool()
        answers = torch.where(truth, ONE, ZERO)
        return dict(input_ids=ids, answers=answers, wrong=ONE + ZERO - answers)


def _attend(attn: nn.Module, head: int, target) -> None:
    # Query at position p asks for position target(p); key at p' announces p'. The score
    # q.k / sqrt(HEAD_DIM) is SHARPNESS for the target, 0 for every other position.
    w = attn.c_attn.weight
    for p in range(POSITIONS):
        w[POS + p, head * HEAD_DIM + target(p)] = SHARPNESS * HEAD_DIM ** 0.5
        w[POS + p, WIDTH + head * HEAD_DIM + p] = 1.0


def _value_bit(attn: nn.Module, head: int) -> None:
    # +1 for the token "1", -1 for every other token (so BOS and SEP look like a "0").
    w = attn.c_attn.weight
    for t in range(VOCAB):
        w[TOK + t, 2 * WIDTH + head * HEAD_DIM] = 1.0 if t == ONE else -1.0


def _value_coordinate(attn: nn.Module, head: int, coordinate: int) -> None:
    attn.c_attn.weight[coordinate, 2 * WIDTH + head * HEAD_DIM] = 1.0


def _write(attn: nn.Module, head: int, coordinate: int) -> None:
    attn.c_proj.weight[head * HEAD_DIM, coordinate] = 1.0


def _bit_head(attn, head, position, coordinate):
    _attend(attn, head, lambda p: min(p, position))
    _value_bit(attn, head)
    _write(attn, head, coordinate)


#: The distractors of each layer, given to its non-circuit heads in head order.
_DISTRACTORS = (("previous", "uniform", "silent"), ("reread S1", "reread junk", "silent", "previous"))


def _distractor_head(attn, head, kind, junk):
    # Real computations whose results land in the unread coordinates.
    if kind == "previous":  # the previous token's bit: at SEP, bit 2
        _attend(attn, head, lambda p: max(p - 1, 0))
        _value_bit(attn, head)
        _write(attn, head, junk)
    elif kind == "uniform":  # the query reads nothing, so attention is uniform: the mean bit so far
        for p in range(POSITIONS):
            attn.c_attn.weight[POS + p, WIDTH + head * HEAD_DIM + p] = 1.0
        _value_bit(attn, head)
        _write(attn, head, junk)
    elif kind == "silent":  # attends and reads, writes nothing
        _attend(attn, head, lambda p: p)
        _value_bit(attn, head)
    else:  # re-reads S1 (a circuit feature) or the first distractor's coordinate
        _attend(attn, head, lambda p: p)
        _value_coordinate(attn, head, S1 if kind == "reread S1" else JUNK[0])
        _write(attn, head, junk)


def _gate_mlp(mlp, gate):
    mlp.c_fc.weight[S1, 0] = mlp.c_fc.weight[S2, 0] = 1.0
    mlp.c_fc.bias[0] = _GATE_BIAS[gate]
    mlp.c_proj.weight[0, OUT] = 2.0
    mlp.c_proj.bias[OUT] = -1.0


def _distractor_mlp(mlp, junk):
    # |S1 - S2| = relu(S1 - S2) + relu(S2 - S1): the XOR of the bits, written where nothing reads.
    for unit, sign in ((1, 1.0), (2, -1.0)):
        mlp.c_fc.weight[S1, unit], mlp.c_fc.weight[S2, unit] = sign, -sign
        mlp.c_proj.weight[unit, junk] = 1.0


def planted_gate(gate: str, *, bit1: tuple[int, int], bit2: tuple[int, int], gate_layer: int,
                 embeddings: str = "joint") -> Planted:
    """A two-layer, four-head GPT-2 computing ``gate(b1, b2)`` through a planted circuit.

    Args:
        gate: ``"or"`` or ``"and"``.
        bit1, bit2: ``(layer, head)`` of the heads that copy bit 1 and bit 2 to the last position.
        gate_layer: the layer whose MLP computes the gate (at least both heads' layers).
        embeddings: ``"joint"`` (edges from ``Resid Start``) or ``"split"`` (queries and keys read
            ``Pos Embed``, values ``Tok Embed``).
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}")
    if embeddings not in ("joint", "split"):
        raise ValueError(f"embeddings must be 'joint' or 'split', got {embeddings!r}")
    if bit1 == bit2 or gate_layer < max(bit1[0], bit2[0]):
        raise ValueError(f"need two different bit heads at or below the gate layer, got {bit1}, {bit2}, {gate_layer}")
    config = GPT2Config(n_layer=2, n_head=HEADS, n_embd=WIDTH, n_inner=4, vocab_size=VOCAB, n_positions=POSITIONS,
                        activation_function="relu", tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=BOS)
    model = GPT2LMHeadModel(config).eval()
    t = model.transformer
    # Identity norms: a LayerNorm would mix every coordinate into every other.
    t.ln_f = nn.Identity()
    for block in t.h:
        block.ln_1, block.ln_2 = nn.Identity(), nn.Identity()
    junk = iter(JUNK * 4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        t.wte.weight[:, TOK:TOK + VOCAB] = torch.eye(VOCAB)
        t.wpe.weight[:, POS:POS + POSITIONS] = torch.eye(POSITIONS)
        for layer, block in enumerate(t.h):
            kinds = iter(_DISTRACTORS[layer])
            for head in range(HEADS):
                if (layer, head) == bit1:
                    _bit_head(block.attn, head, 1, S1)
                elif (layer, head) == bit2:
                    _bit_head(block.attn, head, 2, S2)
                else:
                    _distractor_head(block.attn, head, next(kinds), next(junk))
            if layer == gate_layer:
                _gate_mlp(block.mlp, gate)
            else:
                _distractor_mlp(block.mlp, next(junk))
        model.lm_head.weight[ONE, OUT], model.lm_head.weight[ZERO, OUT] = 1.0, -1.0
    qk, v = ("Resid Start", "Resid Start") if embeddings == "joint" else ("Pos Embed", "Tok Embed")
    edges = []
    for layer, head in (bit1, bit2):
        edges += [f"{qk}->A{layer}.{head}.Q", f"{qk}->A{layer}.{head}.K", f"{v}->A{layer}.{head}.V",
                  f"A{layer}.{head}->MLP {gate_layer}"]
    edges.append(f"MLP {gate_layer}->Resid End")
    return Planted(model, gate, embeddings, tuple(edges))


def planted_or() -> Planted:
    """OR through heads A0.1 and A0.2 and MLP 0 (layer 1 all distractors), embeddings joint."""
    return planted_gate("or", bit1=(0, 1), bit2=(0, 2), gate_layer=0)


def planted_and() -> Planted:
    """AND through heads A1.2 (reading the embeddings across layer 0) and A0.0, and MLP 1,
    embeddings split."""
    return planted_gate("and", bit1=(1, 2), bit2=(0, 0), gate_layer=1, embeddings="split")
