"""Analyses say when their numbers mean nothing: a full model at chance, baselines that all score
the same, and a subnetwork too large for complement sampling, each found on a tiny in-process
model, recorded as a warning and marked in the table."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import neurosurgeon as ns
from neurosurgeon import functional as F
from neurosurgeon.cli import _analysis, _warnings, main
from neurosurgeon.cli.report import format_table, format_warnings
from neurosurgeon.cli.task import Examples

K = 20


def _examples(x: torch.Tensor, labels: torch.Tensor, subtask: torch.Tensor, names) -> Examples:
    return Examples(x, torch.ones(len(x), 1), labels, subtask, tuple(names))


def _logits(model, batch: Examples) -> torch.Tensor:
    return model(batch.input_ids)


def _net(hidden=4) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def _keep(model: nn.Module, name: str, keep: torch.Tensor) -> None:
    """Make ``keep`` the hard mask of mask layer ``name`` (continuous sparsification: theta > 0)."""
    ns.mask_layers(model)[name].weight_mask_params.data = torch.where(keep, 1.0, -1.0)


def _sign_net(head_bias=(0.0, 0.0), head_on=True) -> nn.Sequential:
    """Class 1 logit relu(x0), class 0 logit relu(-x0): only weights (0, 0) and (1, 0) of the first
    layer matter; its other rows are random but the head ignores them."""
    net = _net()
    with torch.no_grad():
        net[0].weight[:2] = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[0.0, 1, 0, 0], [1.0, 0, 0, 0]]) * head_on)
        net[2].bias.copy_(torch.tensor(head_bias))
    ns.inject_masks(net, ["0"], key=0)
    keep = torch.zeros(4, 4, dtype=torch.bool)
    keep[0, 0] = keep[1, 0] = True
    _keep(net, "0", keep)
    return net


def _evaluate(net, data: Examples) -> dict:
    return _analysis.evaluate(net, data, _logits, seeds=K, seed=1)


def _kinds(ev: dict) -> list[str]:
    return [w["kind"] for w in ev["warnings"]]


def _table(ev: dict, subtasks) -> str:
    """The table as the CLI prints it, from an evaluation alone."""
    results = {**ev, "subtasks": list(subtasks), "target_subtask": subtasks[0], "config": {"seeds": K},
               "subnetwork": {"kept": 2, "total": 16, "density": 2 / 16, "layers": {"0": {}}}}
    return format_table(results)


# -- full model at or below chance ------------------------------------------------------------


def test_random_model_below_chance_flags_that_subtask_only():
    net = _net()
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = net(x).argmax(-1)
    subtask = torch.arange(40) % 2
    # sub-task "a" is labelled against the random model's guesses, "b" with them
    labels = torch.where(subtask == 0, 1 - pred, pred)
    ns.inject_masks(net, ["0"], key=0)
    _keep(net, "0", torch.rand(4, 4, generator=torch.Generator().manual_seed(2)) < 0.3)
    ev = _evaluate(net, _examples(x, labels, subtask, ["a", "b"]))
    assert ev["conditions"]["full"] == {"a": 0.0, "b": 1.0}
    flagged = [w for w in ev["warnings"] if w["kind"] == "full_model_at_chance"]
    assert [w["data"]["subtask"] for w in flagged] == ["a"]
    data = flagged[0]["data"]
    majority = int(torch.bincount(labels[subtask == 0]).max()) / 20
    assert data["chance"] == pytest.approx(max(1 / 2, majority)) and data["n_classes"] == 2
    assert "'a'" in flagged[0]["message"] and "train or fine-tune" in flagged[0]["message"]  # "a" is the target
    for by_mode in ev["p_meaningful"].values():
        for ok in by_mode.values():
            assert ok["a"] is False
    table = _table(ev, ["a", "b"])
    header = next(line for line in table.splitlines() if line.startswith("accuracy"))
    assert header.split()[1:] == ["a*", "b"]
    assert "* the full model is at or below chance" in table


def test_model_exactly_at_chance_is_flagged():
    # always class 0, the majority class: accuracy equals the majority share, which is chance
    net = _sign_net(head_bias=(3.0, 0.0), head_on=False)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    ev = _evaluate(net, _examples(x, labels, torch.zeros(8, dtype=torch.long), ["a"]))
    assert ev["conditions"]["full"]["a"] == 0.625 == ev["chance"]["a"]["chance"]
    assert "full_model_at_chance" in _kinds(ev)


@settings(deadline=None, max_examples=25)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=30), st.integers(5, 9))
def test_chance_is_the_majority_share_and_never_below_one_over_classes(labels, n_classes):
    y = torch.tensor(labels)
    level = _warnings.chance_levels(y, torch.zeros_like(y), ["s"], n_classes)["s"]
    assert level["chance"] == pytest.approx(max(1 / n_classes, max(labels.count(c) for c in set(labels)) / len(labels)))
    assert level["chance"] >= 1 / n_classes and level["n_examples"] == len(labels)


# -- degenerate baselines -----------------------------------------------------------------------


def test_collapsed_model_makes_every_baseline_identical_and_no_p_value_meaningful():
    net = _sign_net(head_bias=(3.0, 0.0), head_on=False)  # predicts class 0 whatever the input
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1] * 2)
    subtask = torch.arange(16) // 8
    ev = _evaluate(net, _examples(x, labels, subtask, ["a", "b"]))
    for mode in _analysis.BASELINES:
        for s in ("a", "b"):
            assert set(ev["baselines"][mode][s]["values"]) == {0.625}
    degenerate = [w["data"] for w in ev["warnings"] if w["kind"] == "degenerate_baselines"]
    assert {(d["mode"], d["subtask"]) for d in degenerate} == {(m, s) for m in _analysis.BASELINES for s in "ab"}
    assert all(d["k"] == K and d["value"] == 0.625 for d in degenerate)
    assert all(ok is False for by_mode in ev["p_meaningful"].values() for ps in by_mode.values() for ok in ps.values())
    table = _table(ev, ["a", "b"])
    p_rows = [line for line in table.splitlines() if " vs " in line]
    assert len(p_rows) == 4 and all(line.split()[-2:] == ["n/m", "n/m"] for line in p_rows)
    assert "n/m: not meaningful" in table


def test_identical_baselines_never_report_a_small_p_value():
    # Removing the two weights of the subnetwork breaks the model; removing any others changes
    # nothing, so all complement_sampled baselines score 1.0 and the rank gives p = 1 / (K + 1).
    net = _sign_net()
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
    labels = (x[:, 0] > 0).long()
    ev = _evaluate(net, _examples(x, labels, torch.zeros(40, dtype=torch.long), ["a"]))
    assert ev["conditions"]["full"]["a"] == 1.0 and ev["conditions"]["zero_ablate"]["a"] < 1.0
    assert set(ev["baselines"]["complement_sampled"]["a"]["values"]) == {1.0}
    assert ev["p_values"]["zero_ablate"]["complement_sampled"]["a"] == pytest.approx(1 / (K + 1))
    assert ev["p_meaningful"]["zero_ablate"]["complement_sampled"]["a"] is False
    # the randomly_sampled baselines sometimes hit the two weights: they vary, and their p-value stands
    assert len(set(ev["baselines"]["randomly_sampled"]["a"]["values"])) > 1
    assert ev["p_meaningful"]["zero_ablate"]["randomly_sampled"]["a"] is True
    assert _kinds(ev) == ["degenerate_baselines"]
    rows = {line[:38].strip(): line[38:].strip() for line in _table(ev, ["a"]).splitlines() if " vs " in line}
    assert rows["zero-ablated vs complement_sampled"] == "n/m"
    assert rows["zero-ablated vs randomly_sampled"] == f"{ev['p_values']['zero_ablate']['randomly_sampled']['a']:.3f}"


# -- complement_sampled impossible --------------------------------------------------------------


def test_dense_layer_makes_complement_sampled_impossible_and_names_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    ns.inject_masks(net, ["0", "2"], key=0)
    _keep(net, "0", torch.ones(4, 4, dtype=torch.bool))  # 16 of 16 kept
    keep2 = torch.zeros(6, 4, dtype=torch.bool)
    keep2[0, :3] = True  # 3 of 24 kept: fine
    _keep(net, "2", keep2)
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    ev = _evaluate(net, _examples(x, (x[:, 1] > 0).long(), torch.zeros(12, dtype=torch.long), ["a"]))
    assert ev["baselines"]["complement_sampled"] is None and ev["baselines"]["randomly_sampled"] is not None
    assert "see warnings" in ev["baseline_errors"]["complement_sampled"]
    (w,) = [w for w in ev["warnings"] if w["kind"] == "complement_sampled_impossible"]
    assert w["data"]["tensors"] == [{"tensor": "0.weight", "units": 16, "kept": 16, "outside": 0, "max_kept": 8,
                                     "density": 1.0, "max_density": 0.5}]
    assert w["data"]["excess_units"] == 8
    assert w["data"]["density"] == pytest.approx(19 / 40) and w["data"]["max_density"] == pytest.approx(11 / 40)
    assert "0.weight" in w["message"] and "2.weight" not in w["message"]
    assert "47.5% -> at most 27.5%" in w["message"] and "--l0-lambda" in w["message"]
    assert set(ev["p_meaningful"]["zero_ablate"]) == {"randomly_sampled"}


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 40), st.data())
def test_complement_overflow_is_exactly_when_the_sampler_refuses(n, data):
    kept = data.draw(st.integers(0, n))
    h = torch.zeros(n)
    h[torch.randperm(n, generator=torch.Generator().manual_seed(n))[:kept]] = 1.0
    rows = _warnings.complement_overflow({"w": h})
    try:
        F.complement_sampled_mask(torch.tensor([0, 1]), h)
        refused = False
    except ValueError:
        refused = True
    assert bool(rows) == refused == (kept > n // 2)
    if rows:
        assert rows[0]["max_kept"] == n // 2 and rows[0]["outside"] == n - kept


def test_console_shows_at_most_eight_tensors_and_results_keep_all():
    units = {f"h.{i}.weight": torch.ones(10) for i in range(11)}
    units["h.11.weight"] = torch.zeros(10)
    ev = {"conditions": {"full": {}}, "chance": {}, "baselines": {}, "p_values": {},
          "mask_units": {"kept": 110, "total": 120}, "complement_overflow": _warnings.complement_overflow(units)}
    warnings, _ = _warnings.assess(ev, target="a")
    (w,) = [w for w in warnings if w["kind"] == "complement_sampled_impossible"]
    assert len(w["data"]["tensors"]) == 11
    text = format_warnings(warnings)
    assert "h.7.weight" in text and "h.8.weight" not in text and "and 3 more (all in results.json)" in text
    assert "55 fewer units" in text and "91.7% -> at most 45.8%" in text


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collapsed_bert(tmp_path_factory):
    """A BERT classifier whose head bias drowns its input: it always answers class 0."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    root = tmp_path_factory.mktemp("collapsed")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "movie", "film", "the", "is"]
    (root / "vocab.txt").write_text("\n".join(words))
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "model")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        num_labels=2, max_position_embeddings=8))
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([20.0, 0.0]))
    model.save_pretrained(root / "model")
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "subtask"])
        for i, text in enumerate(["good movie", "bad movie", "good film", "bad film", "the movie is", "the film is"]):
            w.writerows([(text, int(i % 3 == 0), "sentiment"), (text, int(i % 3 == 1), "noun")])
    return root


def test_analyze_warns_on_console_and_in_results_json(collapsed_bert, tmp_path, capsys):
    # mask-init 3 with no L0 pressure and one step: the subnetwork is every weight
    out = tmp_path / "out"
    assert main(["analyze", "--model", str(collapsed_bert / "model"), "--data", str(collapsed_bert / "data.csv"),
                 "--test-fraction", "0.5", "--epochs", "1", "--steps-per-epoch", "1", "--l0-lambda", "0",
                 "--mask-init", "3", "--seeds", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    kinds = {w["kind"] for w in r["warnings"]}
    assert {"full_model_at_chance", "degenerate_baselines", "complement_sampled_impossible",
            "whole_subnetwork"} <= kinds
    assert all(set(w) == {"kind", "message", "data"} for w in r["warnings"])
    for w in r["warnings"]:
        assert f"[{w['kind']}]" in text
    assert {w["data"]["subtask"] for w in r["warnings"] if w["kind"] == "full_model_at_chance"} == {"sentiment", "noun"}
    assert r["chance"]["sentiment"]["n_classes"] == 2
    assert r["baselines"]["complement_sampled"] is None
    (c,) = [w for w in r["warnings"] if w["kind"] == "complement_sampled_impossible"]
    assert "bert.encoder.layer.0.attention.self.query.weight" in {t["tensor"] for t in c["data"]["tensors"]}
    assert "bert.encoder.layer.0.attention.self.query.weight" in text
    assert "note: at or below chance on sentiment (chance " in text  # said before the masks train
    assert r["p_meaningful"]["zero_ablate"]["randomly_sampled"] == {"sentiment": False, "noun": False}
    p_rows = [line for line in text.splitlines() if " vs " in line]
    assert p_rows and all(line.split()[-2:] == ["n/m", "n/m"] for line in p_rows)


def test_demo_marks_exactly_the_subtasks_and_p_values_the_warnings_name(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--no-circuit", "--train-steps", "1", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "8",
                 "--seeds", "3", "--targets", "transformer.h.1.mlp.c_proj", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    at_chance = {w["data"]["subtask"] for w in r["warnings"] if w["kind"] == "full_model_at_chance"}
    for s in r["subtasks"]:
        assert r["chance"][s]["n_classes"] == 10
        assert (s in at_chance) == (r["conditions"]["full"][s] <= r["chance"][s]["chance"] + 1e-6)
    degenerate = {(w["data"]["mode"], w["data"]["subtask"])
                  for w in r["warnings"] if w["kind"] == "degenerate_baselines"}
    rows = {line[:38].strip(): line[38:].split() for line in text.splitlines() if " vs " in line}
    for cond, label in (("zero_ablate", "zero-ablated"), ("random_ablate", "random-ablated")):
        for mode, ps in r["p_meaningful"][cond].items():
            for i, s in enumerate(r["subtasks"]):
                assert ps[s] == (s not in at_chance and (mode, s) not in degenerate)
                assert (rows[f"{label} vs {mode}"][i] == "n/m") == (not ps[s])
