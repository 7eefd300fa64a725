"""Exact patching scores: every edge ablated by itself, as vmapped circuits."""

import doctest

import pytest
import torch
from circuit_zoo import build, ids
from hypothesis import given, settings
from hypothesis import strategies as st

import neurosurgeon.circuits.patching as patching
from neurosurgeon.circuits import (
    ablation_values, circuit_forward, circuit_graph, edge_attribution, metric_values, patching_scores,
)


def _score(logits):
    return metric_values("logit_diff", logits, answers=torch.tensor([1, 2, 3]), wrong=torch.tensor([4, 5, 6])).mean()


def _one_at_a_time(model, graph, x, score, ablated=None):
    # The definition: a forward with every edge, then one per edge with that edge alone ablated.
    def run(mask):
        with torch.no_grad():
            return score(circuit_forward(model, graph, x, mask=mask, ablated=ablated).output)

    ones = torch.ones(graph.num_edges, dtype=torch.float64)
    full = run(ones)
    return torch.stack([full - run(ones - torch.eye(graph.num_edges, dtype=torch.float64)[e])
                        for e in range(graph.num_edges)])


@pytest.fixture(scope="module")
def gpt2():
    model = build("gpt2", dtype=torch.float64)
    return model, circuit_graph(model, embeddings="split"), ids()


@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_patching_scores_equal_one_forward_per_ablated_edge(gpt2, ablation):
    model, graph, x = gpt2
    a = None if ablation == "zero" else ablation_values(model, graph, "resample", x, corrupted=ids(seed=7))
    scores = patching_scores(model, graph, x, _score, ablated=a, chunk_size=16)
    assert scores.shape == (graph.num_edges,) and scores.dtype == torch.float64 and not scores.requires_grad
    torch.testing.assert_close(scores, _one_at_a_time(model, graph, x, _score, a), rtol=0, atol=1e-12)
    # Random weights: every edge moves the score, but the position embedding's: resampling the
    # tokens leaves positions, so its ablated value is its own output and its edges carry nothing.
    from_positions = torch.tensor([e.startswith("Pos Embed->") for e in graph.edges])
    assert scores[~from_positions].abs().min() > 0
    assert scores[from_positions].abs().max() <= (1e-12 if ablation == "resample" else float("inf"))
    assert ablation == "resample" or scores[from_positions].abs().min() > 0


@settings(max_examples=5, deadline=None)
@given(chunk_size=st.integers(1, 200))
def test_patching_scores_do_not_depend_on_the_chunk_size(gpt2, chunk_size):
    model, graph, x = gpt2
    torch.testing.assert_close(patching_scores(model, graph, x, _score, chunk_size=chunk_size),
                               patching_scores(model, graph, x, _score, chunk_size=graph.num_edges), rtol=0, atol=1e-12)


def test_patching_equals_eap_on_edges_the_score_is_linear_in():
    # With an identity final norm, the logits are linear in the mask of every edge into them, and so
    # is a logit difference: removing one of those edges costs exactly its gradient. Elsewhere the
    # model is not linear, and EAP is only the first-order estimate.
    model = build("gpt2", dtype=torch.float64)
    model.transformer.ln_f = torch.nn.Identity()
    graph, x = circuit_graph(model), ids()
    a = ablation_values(model, graph, "mean", x, reference=ids(6, 7, seed=2))
    exact = patching_scores(model, graph, x, _score, ablated=a)
    eap = edge_attribution(model, graph, x, _score, ablated=a)
    into_logits = torch.tensor([e.endswith("Resid End") for e in graph.edges])
    torch.testing.assert_close(exact[into_logits], eap[into_logits], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(exact[~into_logits], eap[~into_logits], rtol=1e-6, atol=0)


def test_patching_scores_refuse_bad_arguments(gpt2):
    model, graph, x = gpt2
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match=f"chunk_size must be a positive int, got {bad!r}"):
            patching_scores(model, graph, x, _score, chunk_size=bad)
    with pytest.raises(TypeError, match="score must be a callable"):
        patching_scores(model, graph, x, "logit_diff")
    with pytest.raises(ValueError, match=r"score must return a 0-d tensor, got shape \(3,\)"):
        patching_scores(model, graph, x, lambda logits: logits[:, -1, 0])
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        patching_scores(model, graph, x.double(), _score)
    with pytest.raises(ValueError, match="ablated must have shape"):
        patching_scores(model, graph, x, _score, ablated=torch.zeros(2, 3, 7, 32, dtype=torch.float64))
    bert = build("bert")
    with pytest.raises(ValueError, match="edge masks need a pre-norm model"):
        patching_scores(bert, circuit_graph(bert), x, lambda out: out.sum())


def test_docstring_example_runs():
    assert doctest.testmod(patching).failed == 0
