"""A learned ground truth for circuit discovery: the shipped two-layer induction model.

The model (``neurosurgeon.circuits.zoo``, trained by ``scripts/train_induction.py``) copies
repeated random tokens with the circuit of Olsson et al. 2022 (arXiv 2209.11895): a
previous-token head in layer 0 writes each position's previous token, and an induction head in
layer 1 reads it through its key (K-composition) to find the token after the current token's
first occurrence. The heads are found here from their attention patterns alone; circuit
discovery (edge pruning, Bhaskar et al. 2024, arXiv 2406.16778; and EAP, Syed et al. 2023, arXiv
2310.10348) must then recover the edge ``A0.{prev}->A1.{ind}.K`` between them, and the circuit
must beat random circuits of its size.
"""

import pytest
import torch

from neurosurgeon.circuits import (
    METRICS, ablation_values, circuit_forward, circuit_graph, edge_attribution, evaluate_circuits, faithfulness,
    metric_values, null_summary, random_circuits, train_circuit,
)
from neurosurgeon.circuits.zoo import induction_batch, induction_model
from neurosurgeon.functional import random as nr
from neurosurgeon.functional.edges import top_k_circuit

LENGTH = 32
# The textbook circuit has four edges (token -> prev.V, prev -> ind.K, token -> ind.V, ind -> logits);
# eight leave room for the edges training ranks beside them, of heads that help a little.
CIRCUIT_EDGES = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A model this small runs fastest on one thread: more threads only contend for busy cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return induction_model()


@pytest.fixture(scope="module")
def graph(model):
    return circuit_graph(model)


def _copy_positions(batch):
    """``(B, T - 1)``: position t's next token is a copy."""
    t = torch.arange(batch["input_ids"].shape[1] - 1)[None]
    return (t >= batch["repeat"][:, None]) & (t <= (batch["repeat"] + batch["segment"] - 2)[:, None])


@pytest.fixture(scope="module")
def head_scores(model):
    """Per head: layer 0's attention from t to t - 1, and layer 1's attention from a copy
    position t to t - segment + 1 (the token after the current token's first occurrence)."""
    batch = induction_batch(nr.key(11), 256, LENGTH)
    with torch.no_grad():
        first, second = model(batch["input_ids"], output_attentions=True).attentions
    previous = first[:, :, 1:].diagonal(dim1=-2, dim2=-1).mean((0, 2))
    t = torch.arange(LENGTH)[None]
    source = (t - batch["segment"][:, None] + 1).clamp(min=0)[:, None, :, None].expand(-1, second.shape[1], -1, 1)
    to_source = second.gather(-1, source)[..., 0][:, :, :-1]  # (B, H, T - 1)
    where = _copy_positions(batch)[:, None]
    induction = (to_source * where).sum((0, 2)) / where.sum((0, 2))
    return previous, induction


@pytest.fixture(scope="module")
def heads(head_scores):
    previous, induction = head_scores
    return int(previous.argmax()), int(induction.argmax())


def test_the_shipped_model_copies_in_context_with_its_mlps_writing_zero(model, graph):
    batch = induction_batch(nr.key(7), 256, LENGTH)
    ids = batch["input_ids"]
    out = circuit_forward(model, graph, ids, return_writers=True)
    torch.testing.assert_close(out.output, model(ids).logits)
    predicted = out.output[:, :-1].argmax(-1)
    correct = predicted == ids[:, 1:]
    copies = _copy_positions(batch)
    assert correct[copies].float().mean() > 0.9
    # Elsewhere the next token is random: it copies, it does not guess.
    assert correct[~copies].float().mean() < 0.1
    mlps = [graph.writers.index(f"MLP {layer}") for layer in range(graph.layers)]
    assert out.writers[mlps].abs().max() == 0
    # The plain task, first half random and second half the same, copies as well.
    half = LENGTH // 2
    first = torch.argsort(nr.bits(nr.key(8), (256, model.config.vocab_size)), dim=1, stable=True)[:, :half]
    plain = torch.cat([first, first], 1)
    with torch.no_grad():
        second_half = model(plain).logits[:, half:-1].argmax(-1)
    assert (second_half == plain[:, half + 1:]).float().mean() > 0.9


def test_the_batch_pairs_each_row_with_a_corrupted_row_that_has_nothing_to_copy():
    batch = induction_batch(nr.key(3), 64, LENGTH)
    ids, corrupted = batch["input_ids"], batch["corrupted"]
    rows = torch.arange(64)
    assert torch.equal(batch["answers"], ids[rows, batch["positions"] + 1])
    assert torch.equal(batch["answers"], ids[rows, batch["positions"] + 1 - batch["segment"]])
    assert torch.equal(batch["wrong"], corrupted[rows, batch["positions"] + 1 - batch["segment"]])
    assert torch.equal(corrupted[rows, batch["positions"]], ids[rows, batch["positions"]])
    segment, repeat = batch["segment"][:, None], batch["repeat"][:, None]
    assert bool(((segment >= 2) & (segment <= LENGTH // 2) & (repeat >= segment) & (repeat + segment <= LENGTH)).all())
    t = torch.arange(LENGTH)[None]
    # The corrupted row differs from its row exactly on the segment's first occurrence.
    assert torch.equal(corrupted != ids, (t >= repeat - segment) & (t < repeat))
    # The segment's tokens come twice; every other token, and every corrupted token, once.
    for row, c, n, r in zip(ids.tolist(), corrupted.tolist(), batch["segment"].tolist(), batch["repeat"].tolist()):
        assert row[r:r + n] == row[r - n:r]
        assert len(set(row)) == LENGTH - n and len(set(c)) == LENGTH
    assert not bool((batch["wrong"] == batch["answers"]).any())
    assert torch.equal(induction_batch(nr.key(3), 64, LENGTH)["corrupted"], corrupted)
    with pytest.raises(ValueError, match="vocab must be an int >= 32, got 16"):
        induction_batch(nr.key(0), 2, LENGTH, vocab=16)
    with pytest.raises(ValueError, match="length must be an int >= 4"):
        induction_batch(nr.key(0), 2, 3)


def test_attention_patterns_single_out_one_previous_token_head_and_one_induction_head(head_scores):
    previous, induction = head_scores
    for scores in (previous, induction):
        best, runner_up = scores.topk(2).values
        assert best > 0.5 and best > 3 * runner_up


@pytest.fixture(scope="module")
def discovered(model, graph):
    """The circuit of ``CIRCUIT_EDGES`` edges of edge masks trained on the copy task (resample
    ablation, logit difference)."""
    train = induction_batch(nr.key(1), 32, LENGTH)
    result = train_circuit(model, graph, [train], key=nr.key(2), steps=100, metric="logit_diff", ablation="resample",
                           target_sparsity=0.95, lr=0.2, lambda_lr=0.5)
    return result.mask.top_k(CIRCUIT_EDGES)


@pytest.fixture(scope="module")
def held_out(model, graph):
    """A fresh batch, its resample values, its score (the mean logit difference) and a circuit's score on it."""
    batch = induction_batch(nr.key(5), 16, LENGTH)
    ablated = ablation_values(model, graph, "resample", batch["input_ids"], corrupted=batch["corrupted"])

    def score(logits):
        return metric_values("logit_diff", logits, answers=batch["answers"], wrong=batch["wrong"],
                             positions=batch["positions"]).mean()

    def run(mask):
        with torch.no_grad():
            return score(circuit_forward(model, graph, batch["input_ids"], mask=mask, ablated=ablated).output)

    return batch, ablated, score, run


def test_discovery_finds_the_previous_token_to_induction_head_key_edge(graph, heads, discovered, held_out, model):
    prev, ind = heads
    edge = f"A0.{prev}->A1.{ind}.K"
    names = graph.edge_names(discovered)
    assert edge in names, names
    _, _, _, run = held_out
    full, empty = run(torch.ones(graph.num_edges)), run(torch.zeros(graph.num_edges))
    assert full > 5 and empty < 0  # the copy wins on the clean rows; the corrupted rows copy nothing
    ours = faithfulness(run(discovered), full, empty)
    assert ours > 0.9
    # Without that one edge the circuit loses most of the copy.
    assert faithfulness(run(discovered - graph.edge_mask([edge])), full, empty) < ours - 0.5
    # Edge attribution patching ranks it among the circuit's size as well.
    batch, ablated, score, _ = held_out
    eap = edge_attribution(model, graph, batch["input_ids"], score, ablated=ablated)
    assert edge in graph.edge_names(top_k_circuit(eap.abs(), CIRCUIT_EDGES))


@pytest.mark.parametrize("null", ["uniform", "in_degree"])
def test_the_discovered_circuit_beats_random_circuits_of_its_size(model, graph, discovered, held_out, null):
    batch, ablated, score, run = held_out
    full, empty = run(torch.ones(graph.num_edges)), run(torch.zeros(graph.num_edges))
    ours = faithfulness(run(discovered), full, empty)
    circuits = random_circuits(nr.key(4), graph, discovered, 256, null=null)
    assert bool((circuits.sum(1) == CIRCUIT_EDGES).all())
    values = evaluate_circuits(model, graph, circuits, batch["input_ids"], score, ablated=ablated, chunk_size=16)
    summary = null_summary(ours, faithfulness(values, full, empty), higher_is_better=METRICS["logit_diff"][1])
    assert summary["null_size"] == 256 and summary["p_value"] < 0.01 and summary["null_q95"] < 0.5 < summary["value"], summary
