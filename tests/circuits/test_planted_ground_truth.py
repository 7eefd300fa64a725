"""Planted circuits as ground truth: hand-built GPT-2 models (see ``planted.py``) whose circuit is
known edge by edge, so discovery can be checked for exact recovery.

Ablation: zero, throughout. The models are built so that a writer's absence is exactly 0 in the
coordinates its readers read (all biases are zero outside the gate MLP, whose constants belong to
its own output), so zeroing an edge removes exactly what it carries and nothing else; a mean
over positions would instead feed the readers a position-averaged mixture of the prompt.
"""

import pytest
import torch
from planted import planted_and, planted_or

from neurosurgeon.circuits import circuit_forward, circuit_graph, edge_attribution, metric_values, train_circuit
from neurosurgeon.circuits.discover import task_loss
from neurosurgeon.functional import random as nr

# The planted circuits, edge by edge (the builders derive the same lists from their arguments;
# spelled out here so the ground truth is read, not recomputed).
PLANTED = {
    "or": (planted_or, [
        "Resid Start->A0.1.Q", "Resid Start->A0.1.K", "Resid Start->A0.1.V", "A0.1->MLP 0",
        "Resid Start->A0.2.Q", "Resid Start->A0.2.K", "Resid Start->A0.2.V", "A0.2->MLP 0",
        "MLP 0->Resid End",
    ]),
    "and": (planted_and, [
        "Pos Embed->A1.2.Q", "Pos Embed->A1.2.K", "Tok Embed->A1.2.V", "A1.2->MLP 1",
        "Pos Embed->A0.0.Q", "Pos Embed->A0.0.K", "Tok Embed->A0.0.V", "A0.0->MLP 1",
        "MLP 1->Resid End",
    ]),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Width-16 models on four prompts: waking intra-op threads costs more than each op, and
    on busy shared cores far more (training here runs ten times slower with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(PLANTED))
def planted(request):
    build, edges = PLANTED[request.param]
    p = build()
    assert sorted(p.edges) == sorted(edges)
    graph = circuit_graph(p.model, embeddings=p.embeddings)
    return p, graph, p.task(), graph.edge_mask(edges)


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC-AUC by ranks (Mann-Whitney U / (n_pos n_neg); Hanley & McNeil 1982, Radiology 143,
    Eq. 2): the chance a random positive outscores a random negative, ties counting one half."""
    less = (scores[None, :] < scores[:, None]).sum(1).double()
    equal = (scores[None, :] == scores[:, None]).sum(1).double()
    ranks = less + (equal + 1) / 2  # 1-based, ties get their average rank
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def test_roc_auc_by_ranks():
    labels = torch.tensor([True, True, False, False, False])
    assert roc_auc(torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), labels) == 1.0
    assert roc_auc(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), labels) == 0.0
    assert roc_auc(torch.ones(5), labels) == 0.5
    # One positive (3) below one negative (4) of six pairs: 5/6; a tie with a negative counts 1/2.
    assert roc_auc(torch.tensor([5.0, 3.0, 4.0, 2.0, 1.0]), labels) == pytest.approx(5 / 6)
    assert roc_auc(torch.tensor([5.0, 4.0, 4.0, 2.0, 1.0]), labels) == pytest.approx(5.5 / 6)


def _accuracy(logits, task):
    return metric_values("accuracy", logits, answers=task["answers"])


def _logit_diff(logits, task):
    return metric_values("logit_diff", logits, answers=task["answers"], wrong=task["wrong"])


def test_the_model_does_the_task(planted):
    p, graph, task, _ = planted
    ids = task["input_ids"]
    logits = p.model(ids).logits
    assert torch.equal(_accuracy(logits, task), torch.ones(4))
    assert (_logit_diff(logits, task) > 1.9).all()  # OUT = +-1 at least, the answer gets +|OUT| and the wrong -|OUT|
    # The circuit forward reads the identity norms as identities: all edges kept is the model.
    ones = torch.ones(graph.num_edges)
    assert torch.allclose(circuit_forward(p.model, graph, ids, mask=ones).output, logits, atol=1e-6)


def test_the_planted_circuit_alone_is_the_model(planted):
    p, graph, task, circuit = planted
    ids = task["input_ids"]
    full = p.model(ids).logits
    alone = circuit_forward(p.model, graph, ids, mask=circuit).output
    assert torch.equal(_accuracy(alone, task), torch.ones(4))
    assert torch.allclose(_logit_diff(alone, task), _logit_diff(full, task), atol=1e-6)
    assert torch.allclose(alone, full, atol=1e-6)  # every other edge together carries nothing
    # Without the circuit the task is gone: the logits are all zero.
    assert torch.equal(circuit_forward(p.model, graph, ids, mask=1 - circuit).output, torch.zeros_like(full))


def test_every_planted_edge_is_needed(planted):
    p, graph, task, circuit = planted
    for name in graph.edge_names(circuit):
        without = circuit.clone()
        without[graph.edge_index(name)] = 0
        logits = circuit_forward(p.model, graph, task["input_ids"], mask=without).output
        assert _accuracy(logits, task).mean() < 1, name


# Masks start open (kept with probability 0.9, or sigma(3) = 0.95): see the next test for why
# not half open. An L0 penalty and a target sparsity (ten percent of the edges) both recover it.
TRAINING = {
    "hard_concrete-l0": dict(strategy="hard_concrete", mask_init_percentage=0.9, l0_lambda=0.01),
    "continuous_sparsification-target": dict(strategy="continuous_sparsification", mask_init_value=3.0,
                                             target_sparsity=0.9, lambda_lr=0.05),
}


@pytest.mark.parametrize("training", sorted(TRAINING))
def test_training_recovers_the_planted_circuit(planted, training):
    p, graph, task, circuit = planted
    out = train_circuit(p.model, graph, [task], key=nr.key(0), steps=50, metric="kl", ablation="zero", lr=0.1,
                        **TRAINING[training])
    k = int(circuit.sum())
    found = out.mask.top_k(k)
    assert graph.edge_names(found) == graph.edge_names(circuit)
    theta = out.mask.theta.detach()
    planted_edges = circuit.bool()
    # Not a tie-break: every planted edge's theta is well above every other's, and the strategy's
    # own binary mask (threshold 0 on theta for both) is the planted circuit too.
    assert theta[planted_edges].min() > theta[~planted_edges].max() + 1
    assert torch.equal(out.mask.hard(), circuit)
    logits = circuit_forward(p.model, graph, task["input_ids"], mask=found).output
    assert torch.equal(_accuracy(logits, task), torch.ones(4))


def _task_gradient(p, graph, task, level):
    full = p.model(task["input_ids"]).logits.detach()

    def loss(mask):
        logits = circuit_forward(p.model, graph, task["input_ids"], mask=mask).output
        return task_loss("kl", logits, task, full)

    return torch.func.grad(loss)(torch.full((graph.num_edges,), level))


def test_half_open_masks_starve_the_and_gate():
    # With every mask at 0.5 a copied bit reaches the gate at a quarter at most (value edge times
    # MLP edge, under a flattened attention), so S1 + S2 - 1 < 0 on every prompt,
    # the AND unit's ReLU is off, and no planted edge upstream of it gets any gradient: from a
    # half-open start, L0 training sinks them with the irrelevant edges. OR's unit (S1 + S2 + 1)
    # stays on, and at 0.9 the AND unit is on for (1, 1).
    for name, level, starved in (("and", 0.5, True), ("and", 0.9, False), ("or", 0.5, False)):
        build, edges = PLANTED[name]
        p = build()
        graph = circuit_graph(p.model, embeddings=p.embeddings)
        grad = _task_gradient(p, graph, p.task(), level)
        upstream = graph.edge_mask(edges[:-1]).bool()  # all but the gate MLP's edge to the logits
        assert bool((grad[upstream] == 0).all()) is starved, (name, level)
        assert grad[graph.edge_index(edges[-1])] != 0


def test_edge_attribution_ranks_the_planted_edges_first(planted):
    p, graph, task, circuit = planted

    def score(logits):
        return _logit_diff(logits, task).mean()

    scores = edge_attribution(p.model, graph, task["input_ids"], score)
    planted_edges = circuit.bool()
    assert roc_auc(scores.abs(), planted_edges) == 1.0
    # The attention is not saturated, so the query and key edges score too; the rest score nothing.
    assert scores[planted_edges].abs().min() > 1e-2
    assert scores[~planted_edges].abs().max() < 1e-9
