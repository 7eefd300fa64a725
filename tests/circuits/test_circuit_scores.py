"""Metrics, faithfulness, edge attribution scores and random-circuit nulls."""

import pytest
import torch
from circuit_zoo import build, ids
from hypothesis import given
from hypothesis import strategies as st

from neurosurgeon.circuits import (
    ablation_values, circuit_forward, circuit_graph, edge_attribution, evaluate_circuits, faithfulness,
    metric_values, null_summary, random_circuits,
)
from neurosurgeon.functional import random as nr
from neurosurgeon.functional.edges import in_degree_circuit, random_circuit, top_k_circuit


def _linear_in_writers():
    # Writers whose outputs do not depend on their inputs (zero MLP input and value weights, so
    # each writes its biases through its output projection) and an identity final norm: the logits
    # are linear in the edges into them, and every other edge changes nothing.
    model = build("gpt2", dtype=torch.float64)
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.weight.zero_()
            block.attn.c_attn.weight[:, 64:].zero_()
    model.transformer.ln_f = torch.nn.Identity()
    return model


def test_edge_attribution_sums_to_the_total_effect_when_linear():
    model = _linear_in_writers()
    g, x = circuit_graph(model, embeddings="split"), ids()
    a = ablation_values(model, g, "mean", x, reference=ids(6, 7, seed=2))
    answers, wrong = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])

    def score(logits):
        return metric_values("logit_diff", logits, answers=answers, wrong=wrong).mean()

    scores = edge_attribution(model, g, x, score, ablated=a)
    full = score(circuit_forward(model, g, x, mask=torch.ones(g.num_edges, dtype=torch.float64), ablated=a).output)
    none = score(circuit_forward(model, g, x, mask=torch.zeros(g.num_edges, dtype=torch.float64), ablated=a).output)
    assert scores.shape == (g.num_edges,) and scores.dtype == torch.float64 and not scores.requires_grad
    assert torch.isclose(scores.sum(), full - none, rtol=1e-10, atol=1e-12)
    into_logits = torch.tensor([e.endswith("Resid End") for e in g.edges])
    assert scores[into_logits].abs().min() > 0 and scores[~into_logits].abs().max() < 1e-12


def test_edge_attribution_is_the_gradient_at_one():
    # GPT-NeoX: Llama's RMSNorm computes in float32 whatever the model's dtype, too coarse for a
    # finite difference.
    model = build("gpt_neox", dtype=torch.float64)
    g, x = circuit_graph(model), ids()
    a = ablation_values(model, g, "resample", x, corrupted=ids(seed=7))

    def score(logits):
        return logits[:, -1, 3].mean()

    scores = edge_attribution(model, g, x, score, ablated=a)
    i = g.edge_index("Resid Start->A0.2.V")
    eps = 1e-6
    m = torch.ones(g.num_edges, dtype=torch.float64)
    m[i] -= eps
    lower = score(circuit_forward(model, g, x, mask=m, ablated=a).output)
    upper = score(circuit_forward(model, g, x, ablated=a).output)
    assert scores[i].abs() > 1e-5 and torch.isclose(scores[i], (upper - lower) / eps, rtol=1e-4)


def test_metrics_known_values():
    logits = torch.log(torch.tensor([[[0.1, 0.2, 0.7]], [[0.5, 0.25, 0.25]]]))
    answers, wrong = torch.tensor([2, 1]), torch.tensor([0, 0])
    assert torch.allclose(metric_values("logit_diff", logits, answers=answers, wrong=wrong),
                          torch.log(torch.tensor([7.0, 0.5])))
    assert torch.allclose(metric_values("cross_entropy", logits, answers=answers), -torch.log(torch.tensor([0.7, 0.25])))
    assert torch.equal(metric_values("accuracy", logits, answers=answers), torch.tensor([1.0, 0.0]))
    assert torch.allclose(metric_values("kl", logits, full_logits=logits), torch.zeros(2), atol=1e-7)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        metric_values("f1", logits)
    with pytest.raises(ValueError, match="needs answers="):
        metric_values("accuracy", logits)


def test_faithfulness():
    assert faithfulness(3.0, 4.0, 0.0) == 0.75
    with pytest.warns(UserWarning, match="undefined"):
        assert torch.isnan(faithfulness(1.0, 2.0, 2.0))


def test_top_k_circuit_is_exact():
    scores = torch.tensor([0.3, 0.9, 0.3, -1.0, 0.5])
    assert torch.equal(top_k_circuit(scores, 3), torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]))
    assert top_k_circuit(scores, 0).sum() == 0 and top_k_circuit(scores, 5).sum() == 5
    with pytest.raises(ValueError, match="k must be in"):
        top_k_circuit(scores, 6)


@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=8), data=st.data(), seed=st.integers(0, 2**32))
def test_in_degree_circuits_keep_each_groups_count(sizes, data, seed):
    kept = [data.draw(st.integers(0, s)) for s in sizes]
    sizes_t, kept_t = torch.tensor(sizes), torch.tensor(kept)
    mask = in_degree_circuit(nr.key(seed), sizes_t, kept_t)
    assert torch.equal(torch.segment_reduce(mask, "sum", lengths=sizes_t), kept_t.float())
    assert torch.equal(mask, in_degree_circuit(nr.key(seed), sizes_t, kept_t))


def test_in_degree_circuit_is_uniform_within_a_group():
    # Each of 6 edges kept with probability 2/6, over many keys.
    keys = nr.split(nr.key(0), 3000)
    masks = torch.func.vmap(lambda k: in_degree_circuit(k, torch.tensor([6]), torch.tensor([2])))(keys)
    freq = masks.mean(0)
    assert (freq - 1 / 3).abs().max() < 0.04


def test_random_circuits_vmapped_equal_a_loop_bitwise():
    model = build("gpt2")
    g = circuit_graph(model)
    circuit = torch.zeros(g.num_edges)
    circuit[torch.randperm(g.num_edges, generator=torch.Generator().manual_seed(0))[:12]] = 1
    key = nr.key(5)
    uniform = random_circuits(key, g, circuit, 16)
    loop = torch.stack([random_circuit(k, g.num_edges, 12) for k in nr.split(key, 16)])
    assert torch.equal(uniform, loop) and (uniform.sum(1) == 12).all()
    assert len({tuple(r.tolist()) for r in uniform}) > 1
    degree = random_circuits(key, g, circuit, 16, null="in_degree")
    sizes = torch.tensor(g.in_degrees)
    per_reader = torch.stack([torch.segment_reduce(r, "sum", lengths=sizes) for r in degree])
    assert torch.equal(per_reader, torch.segment_reduce(circuit, "sum", lengths=sizes).expand(16, -1))
    with pytest.raises(ValueError, match="null must be one of"):
        random_circuits(key, g, circuit, 4, null="degree")


def test_evaluate_circuits_vmapped_equals_a_loop():
    model = build("gpt_neox")
    g, x = circuit_graph(model), ids()
    a = ablation_values(model, g, "mean", x, reference=ids(6, 7, seed=2))
    circuit = torch.zeros(g.num_edges)
    circuit[::5] = 1
    circuits = random_circuits(nr.key(1), g, circuit, 6)

    def score(logits):
        return logits[:, -1].log_softmax(-1)[:, 0].mean()

    vmapped = evaluate_circuits(model, g, circuits, x, score, ablated=a)
    with torch.no_grad():
        loop = torch.stack([score(circuit_forward(model, g, x, mask=c, ablated=a).output) for c in circuits])
    assert vmapped.shape == (6,) and torch.allclose(vmapped, loop, rtol=1e-5, atol=1e-6)
    assert torch.allclose(evaluate_circuits(model, g, circuits, x, score, ablated=a, chunk_size=4), vmapped)
    assert torch.allclose(evaluate_circuits(model, g, circuits, x, score, ablated=a, chunk_size=1), vmapped)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match=f"chunk_size must be a positive int or None, got {bad!r}"):
            evaluate_circuits(model, g, circuits, x, score, ablated=a, chunk_size=bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_chunk_keeps_a_chunks_readers_inputs_within_48_mib(dtype):
    # A GPT-2-small-shaped model (on the meta device: shapes only) at 8 x 64 tokens: one layer's 36
    # attention readers' inputs are 36 * 512 * 768 entries, over 48 MiB in float32: one circuit a
    # chunk. A 4-token batch: 48 MiB // (36 * 4 * 768 * entry) circuits, at most K.
    from transformers import GPT2Config, GPT2LMHeadModel

    from neurosurgeon.circuits.null import circuit_chunk_size

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config()).to(dtype)
    g, entry = circuit_graph(model), torch.finfo(dtype).bits // 8
    assert circuit_chunk_size(model, g, torch.zeros(8, 64, dtype=torch.long), 32) == 1
    assert circuit_chunk_size(model, g, torch.zeros(1, 4, dtype=torch.long), 10_000) == 48 * 2**20 // (
        36 * 4 * 768 * entry)
    assert circuit_chunk_size(model, g, torch.zeros(1, 4, dtype=torch.long), 5) == 5


def test_null_summary_p_value():
    null = torch.arange(99, dtype=torch.float64)
    s = null_summary(97.5, null)
    assert s["p_value"] == (1 + 1) / 100 and s["null_median"] == 49 and s["null_size"] == 99
    assert null_summary(-1.0, null, higher_is_better=False)["p_value"] == 1 / 100
