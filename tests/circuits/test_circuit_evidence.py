"""The evidence of a circuit number: the faithfulness curve and its area, the null at every size
(keyed per size), the scorer against a loop over batches, the chance check, overlap and stability,
and the warnings where a number means nothing."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from neurosurgeon.circuits import (
    ablation_values, circuit_forward, circuit_graph, metric_values, null_summary, random_circuits,
)
from neurosurgeon.circuits.evidence import (
    LADDER, CircuitEvidenceWarning, CircuitScorer, chance_check, chance_level, circuit_evidence, circuit_overlap,
    faithfulness_curve, null_curve, size_ladder, stability,
)
from neurosurgeon.functional import random as nr
from neurosurgeon.functional.edges import top_k_circuit
from neurosurgeon.functional.overlap import expected_overlap, hypergeometric_sf

VOCAB = 20


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A model this small is bound by per-op overhead; on a busy machine more threads only wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=16, bos_token_id=0,
                        eos_token_id=0, initializer_range=0.3)
    return GPT2LMHeadModel(config).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def graph(model):
    return circuit_graph(model)


def _batch(model, n, length, seed):
    """Clean and corrupted prompts (the last token changed) answered by the model's own top token,
    the wrong answer the corrupted prompt's top token (or the clean second)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(VOCAB, (n, length), generator=g)
    corrupted = ids.clone()
    corrupted[:, -1] = (ids[:, -1] + 1 + torch.randint(VOCAB - 1, (n,), generator=g)) % VOCAB
    with torch.no_grad():
        top2 = model(ids).logits[:, -1].topk(2).indices
        other = model(corrupted).logits[:, -1].argmax(-1)
    wrong = torch.where(other == top2[:, 0], top2[:, 1], other)
    return {"input_ids": ids, "corrupted": corrupted, "answers": top2[:, 0], "wrong": wrong}


@pytest.fixture(scope="module")
def batches(model):
    return [_batch(model, 5, 6, seed=1), _batch(model, 3, 4, seed=2)]


def _linear_scorer(weights):
    """A task score linear in the mask: S(c) = c . w (full: sum w, empty: 0)."""
    return lambda circuits: circuits.double() @ weights.double()


# -- the curve -------------------------------------------------------------------------------------

def test_curve_is_the_faithfulness_of_each_top_k_circuit():
    g = torch.Generator().manual_seed(0)
    weights, ranking = torch.rand(40, generator=g), torch.randn(40, generator=g)
    sizes = [1, 3, 10, 25, 40]
    curve = faithfulness_curve(_linear_scorer(weights), ranking, sizes)
    order = ranking.argsort(descending=True)
    expected = [float(weights[order[:k]].double().sum() / weights.double().sum()) for k in sizes]
    assert curve["faithfulness"] == pytest.approx(expected, rel=1e-12)
    assert curve["full"] == pytest.approx(float(weights.double().sum())) and curve["empty"] == 0.0
    assert curve["faithfulness"][-1] == 1.0
    x = torch.tensor(sizes, dtype=torch.float64) / 40
    area = torch.trapezoid(torch.tensor(expected, dtype=torch.float64), x) / (x[-1] - x[0])
    assert curve["area"] == pytest.approx(float(area), rel=1e-12)
    assert curve["fractions"] == [k / 40 for k in sizes] and curve["warnings"] == []


def test_a_curve_of_one_size_has_its_faithfulness_as_area():
    weights = torch.arange(1.0, 11.0)
    curve = faithfulness_curve(_linear_scorer(weights), weights, [2])
    assert curve["area"] == curve["faithfulness"][0] == pytest.approx(19 / 55)


def test_no_gap_between_full_and_empty_warns_and_gives_nan():
    with pytest.warns(CircuitEvidenceWarning, match="score the same"):
        curve = faithfulness_curve(lambda c: torch.full((c.shape[0],), 2.5, dtype=torch.float64), torch.randn(12),
                                   [1, 6])
    assert all(math.isnan(f) for f in curve["faithfulness"]) and math.isnan(curve["area"])
    assert [w["kind"] for w in curve["warnings"]] == ["faithfulness_undefined"]
    assert curve["warnings"][0]["data"] == {"full": 2.5, "empty": 2.5}


def test_size_ladder():
    assert size_ladder(110, include=[20]) == [1, 2, 6, 11, 20, 22, 55, 110]
    assert size_ladder(5000) == [round(f * 5000) for f in LADDER]
    assert size_ladder(7, fractions=[0.5]) == [4]
    for bad in (dict(num_edges=0), dict(num_edges=10, include=[11]), dict(num_edges=10, fractions=[0.0])):
        with pytest.raises(ValueError):
            size_ladder(**bad)
    with pytest.raises(ValueError, match="increasing"):
        faithfulness_curve(_linear_scorer(torch.ones(8)), torch.randn(8), [4, 2])


# -- the null ------------------------------------------------------------------------------------

@pytest.mark.parametrize("null", ["uniform", "in_degree"])
def test_null_at_size_i_draws_from_fold_in_key_i(graph, null):
    g = torch.Generator().manual_seed(3)
    weights, ranking = torch.rand(graph.num_edges, generator=g), torch.randn(graph.num_edges, generator=g)
    score = _linear_scorer(weights)
    sizes = [2, 9, graph.num_edges]
    circuits = torch.stack([top_k_circuit(ranking, k) for k in sizes])
    ours = score(circuits).tolist()
    key = nr.key(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CircuitEvidenceWarning)  # whether ours is inside the band is checked below
        result = null_curve(key, score, graph, circuits, ours, num=25, null=null, full=ours[-1], empty=0.0)
    for i, entry in enumerate(result["sizes"][:-1]):
        drawn = random_circuits(nr.fold_in(key, i), graph, circuits[i], 25, null=null)
        expected = null_summary(ours[i], score(drawn))
        assert {k: entry[k] for k in expected} == expected
        assert entry["size"] == sizes[i]
        assert entry["within_band"] == (entry["null_q05"] <= ours[i] <= entry["null_q95"])
        # linear with an empty score of 0: faithfulness is the score over the full score
        assert entry["faithfulness"]["null_median"] == pytest.approx(entry["null_median"] / ours[-1])
    assert result["sizes"][-1] is None  # every circuit of all edges is the full model
    medians = [e["faithfulness"]["null_median"] for e in result["sizes"][:-1]] + [1.0]
    x = torch.tensor(sizes, dtype=torch.float64) / graph.num_edges
    assert result["median_area"] == pytest.approx(float(torch.trapezoid(torch.tensor(medians), x) / (x[-1] - x[0])))


def test_a_circuit_inside_the_null_band_is_flagged(graph):
    constant = lambda c: torch.full((c.shape[0],), 1.0, dtype=torch.float64)  # noqa: E731
    circuits = torch.stack([top_k_circuit(torch.randn(graph.num_edges), k) for k in (3, 8)])
    with pytest.warns(CircuitEvidenceWarning, match="not distinguishable"):
        inside = null_curve(nr.key(0), constant, graph, circuits, [1.0, 1.0], num=10)
    assert [w["kind"] for w in inside["warnings"]] == ["circuit_within_null"]
    assert inside["warnings"][0]["data"]["sizes"] == [3, 8]
    assert all(e["within_band"] and e["p_value"] == 1.0 for e in inside["sizes"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        above = null_curve(nr.key(0), constant, graph, circuits, [2.0, 2.0], num=10)
    assert above["warnings"] == [] and all(e["p_value"] == 1 / 11 for e in above["sizes"])
    # lower is better: 0 beats every random circuit's 1
    below = null_curve(nr.key(0), constant, graph, circuits, [0.0, 0.0], num=10, higher_is_better=False)
    assert all(e["p_value"] == 1 / 11 and not e["within_band"] for e in below["sizes"])


def test_null_curve_refusals(graph):
    circuits = torch.stack([top_k_circuit(torch.randn(graph.num_edges), 3)])
    score = _linear_scorer(torch.ones(graph.num_edges))
    with pytest.raises(ValueError, match="null must be"):
        null_curve(nr.key(0), score, graph, circuits, [0.0], num=5, null="shuffled")
    with pytest.raises(ValueError, match="num"):
        null_curve(nr.key(0), score, graph, circuits, [0.0], num=1)
    with pytest.raises(ValueError, match="one score per circuit"):
        null_curve(nr.key(0), score, graph, circuits, [0.0, 1.0], num=5)
    with pytest.raises(ValueError, match="circuits must have shape"):
        null_curve(nr.key(0), score, graph, circuits[:, :-1], [0.0], num=5)


# -- the scorer ------------------------------------------------------------------------------------

def _loop_score(model, graph, batches, circuit, metric, ablation, reference=None):
    """The mean metric over every example, one batch and one forward at a time."""
    total, count = 0.0, 0
    for b in batches:
        ids = b["input_ids"]
        a = ablation if isinstance(ablation, torch.Tensor) else ablation_values(
            model, graph, ablation, ids, reference=reference, corrupted=b["corrupted"])
        with torch.no_grad():
            full = circuit_forward(model, graph, ids).output
            logits = circuit_forward(model, graph, ids, mask=circuit, ablated=a).output
        v = metric_values(metric, logits, answers=b["answers"], wrong=b["wrong"], full_logits=full)
        total, count = total + float(v.double().sum()), count + len(v)
    return total / count


@pytest.mark.parametrize("metric, ablation", [("logit_diff", "resample"), ("kl", "mean"), ("cross_entropy", "zero"),
                                              ("accuracy", "values")])
def test_scorer_equals_a_loop_over_batches_of_different_lengths(model, graph, batches, metric, ablation):
    reference = batches[0]["corrupted"]
    if ablation == "values":  # given values, as a learned ablation's
        ablation = 0.5 * torch.randn(len(graph.writers), 1, 1, model.config.n_embd,
                                     generator=torch.Generator().manual_seed(4))
    scorer = CircuitScorer(model, graph, batches, metric=metric, ablation=ablation, reference=reference,
                           chunk_size=2)
    g = torch.Generator().manual_seed(5)
    circuits = (torch.rand(3, graph.num_edges, generator=g) < 0.4).float()
    got = scorer(circuits)
    assert got.dtype == torch.float64 and got.shape == (3,)
    for c, value in zip(circuits, got.tolist()):
        assert value == pytest.approx(_loop_score(model, graph, batches, c, metric, ablation, reference), abs=1e-5)
    assert scorer.num_examples == 8 and scorer.higher_is_better == (metric in ("logit_diff", "accuracy"))
    # per example: the full model, and one circuit
    assert float(scorer.values().mean()) == pytest.approx(float(scorer(torch.ones(1, graph.num_edges))), abs=1e-5)
    assert float(scorer.values(circuits[0]).mean()) == pytest.approx(got[0].item(), abs=1e-5)
    assert scorer.values().shape == (8,)


def test_scorer_refusals(model, graph, batches):
    with pytest.raises(ValueError, match="unknown metric"):
        CircuitScorer(model, graph, batches, metric="bleu")
    with pytest.raises(ValueError, match="learned"):
        CircuitScorer(model, graph, batches, metric="kl", ablation="learned")
    with pytest.raises(ValueError, match="empty"):
        CircuitScorer(model, graph, [], metric="kl")
    with pytest.raises(ValueError, match="chunk_size"):
        CircuitScorer(model, graph, batches, metric="kl", chunk_size=0)
    with pytest.raises(ValueError, match="mean ablation needs reference"):
        CircuitScorer(model, graph, batches, metric="kl", ablation="mean")
    with pytest.raises(ValueError, match=f"\\(K, {graph.num_edges}\\)"):
        CircuitScorer(model, graph, batches, metric="kl")(torch.ones(graph.num_edges))


# -- chance ---------------------------------------------------------------------------------------

def test_chance_levels():
    assert chance_level("logit_diff", 50) == 0.0
    assert chance_level("accuracy", 50) == 1 / 50
    assert chance_level("cross_entropy", 50) == pytest.approx(math.log(50))
    assert chance_level("kl", 50) is None
    with pytest.raises(ValueError, match="unknown metric"):
        chance_level("f1", 50)
    with pytest.raises(ValueError, match="vocab_size"):
        chance_level("accuracy", 1)


def test_chance_check():
    clear = torch.tensor([1.0, 1.2, 0.9, 1.1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = chance_check(clear, 0.0)
    assert ok["above_chance"] and ok["warnings"] == [] and ok["n"] == 4
    assert ok["z"] == pytest.approx(float(clear.double().mean() / (clear.double().std() / 2)))
    # a positive mean, but within noise of chance: two standard errors are needed
    with pytest.warns(CircuitEvidenceWarning, match="does not beat chance"):
        noisy = chance_check(torch.tensor([2.0, -1.5, 1.0, -1.0]), 0.0)
    assert noisy["above_chance"] is False and noisy["warnings"][0]["kind"] == "full_model_at_chance"
    # lower is better: a cross-entropy far below log V beats chance, one above it does not
    assert chance_check(torch.tensor([0.1, 0.2, 0.15]), math.log(20), higher_is_better=False)["above_chance"]
    with pytest.warns(CircuitEvidenceWarning):
        assert not chance_check(torch.tensor([3.5, 3.4]), math.log(20), higher_is_better=False)["above_chance"]
    assert chance_check(torch.tensor([0.3]), None)["above_chance"] is None  # kl: no chance level
    assert chance_check(torch.tensor([0.3]), 0.0)["above_chance"]  # one example: the sign alone


# -- everything for one ranking ----------------------------------------------------------------------

def test_circuit_evidence_on_a_model(model, graph, batches):
    scorer = CircuitScorer(model, graph, batches, metric="logit_diff", ablation="resample")
    ranking = torch.randn(graph.num_edges, generator=torch.Generator().manual_seed(6))
    sizes = size_ladder(graph.num_edges, fractions=(0.05, 0.2, 1.0), include=[10])
    key = nr.key(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CircuitEvidenceWarning)
        both = circuit_evidence(key, scorer, ranking, sizes, num_null=12, chance=0.0)
        uniform = circuit_evidence(key, scorer, ranking, sizes, num_null=12, nulls=["uniform"], chance=0.0)
    assert both["full"] == pytest.approx(float(scorer.values().mean()), abs=1e-5)
    assert both["curve"]["faithfulness"][-1] == 1.0 and both["curve"]["sizes"] == sizes
    assert both["chance"]["above_chance"]  # the answers are the model's own top tokens
    # one null's draws do not depend on which other nulls are asked for
    assert uniform["null"]["uniform"] == both["null"]["uniform"] and list(uniform["null"]) == ["uniform"]
    assert set(both["null"]) == {"uniform", "in_degree"}
    assert not any("warnings" in null for null in both["null"].values())  # moved into the one list
    kinds = {w["kind"] for w in both["warnings"]}
    assert kinds <= {"circuit_within_null"}
    for name, null in both["null"].items():
        assert null["sizes"][-1] is None and null["num"] == 12
        within = [e["size"] for e in null["sizes"] if e is not None and e["within_band"]]
        flagged = [w["data"]["sizes"] for w in both["warnings"] if w["data"].get("null") == name]
        assert flagged == ([within] if within else [])
    with pytest.raises(ValueError, match="nulls"):
        circuit_evidence(key, scorer, ranking, sizes, nulls=["shuffle"])


def test_circuit_evidence_warns_where_nothing_is_measured(model, graph, batches):
    # The corrupted prompt is the clean one: resampling removes nothing, and the wrong answer is the
    # model's top token, so it does not do the task either.
    same = [{**b, "corrupted": b["input_ids"], "answers": b["wrong"], "wrong": b["answers"]} for b in batches]
    scorer = CircuitScorer(model, graph, same, metric="logit_diff", ablation="resample")
    with pytest.warns(CircuitEvidenceWarning):
        ev = circuit_evidence(nr.key(0), scorer, torch.randn(graph.num_edges), [5, 20], num_null=5, chance=0.0)
    kinds = [w["kind"] for w in ev["warnings"]]
    assert kinds == ["faithfulness_undefined", "full_model_at_chance", "circuit_within_null", "circuit_within_null"]
    assert all(math.isnan(f) for f in ev["curve"]["faithfulness"])


# -- overlap and stability --------------------------------------------------------------------------

def test_overlap_is_the_hypergeometric_comparison():
    g = torch.Generator().manual_seed(8)
    a, b = top_k_circuit(torch.randn(60, generator=g), 12), top_k_circuit(torch.randn(60, generator=g), 20)
    both = int((a * b).sum())
    o = circuit_overlap(a, b)
    assert (o["total"], o["kept_a"], o["kept_b"], o["intersection"]) == (60, 12, 20, both)
    assert o["iou"] == both / (12 + 20 - both)
    assert o["p_value"] == hypergeometric_sf(both, 60, 12, 20)
    assert o["expected_intersection"] == expected_overlap(60, 12, 20)
    assert circuit_overlap(a.bool(), a)["p_value"] == hypergeometric_sf(12, 60, 12, 12)
    with pytest.raises(ValueError, match="binary"):
        circuit_overlap(a * 0.5, b)
    with pytest.raises(ValueError, match="one graph"):
        circuit_overlap(a, b[:-1])


def test_stability_is_the_jaccard_of_every_pair():
    runs = [torch.tensor([1, 1, 1, 0, 0, 0]), torch.tensor([1, 1, 0, 1, 0, 0]), torch.tensor([0, 0, 0, 1, 1, 1])]
    s = stability(torch.stack(runs))
    assert s["runs"] == 3 and [(p["a"], p["b"]) for p in s["pairs"]] == [(0, 1), (0, 2), (1, 2)]
    assert [p["iou"] for p in s["pairs"]] == [2 / 4, 0.0, 1 / 5]
    assert s["mean_iou"] == pytest.approx((0.5 + 0.0 + 0.2) / 3)
    assert (s["min_iou"], s["max_iou"]) == (0.0, 0.5)
    # three of six edges twice: 1.5 shared on average, Jaccard 1.5 / 4.5
    assert s["mean_expected_iou"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        stability([runs[0]])
    with pytest.raises(ValueError, match="one graph"):
        stability([runs[0], runs[1][:-1]])
    with pytest.raises(ValueError, match="binary"):
        stability([runs[0], runs[1] * 2])
