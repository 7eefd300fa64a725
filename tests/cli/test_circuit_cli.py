"""``neurosurgeon circuit``: a run on a tiny GPT-2 checked by what it writes (the circuit's edges, its
score recomputed from circuit.json, the null's p-values, the stability), the warnings of a task with
nothing to measure, and bad input refused with exit status 2 and nothing written."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from neurosurgeon.circuits import ablation_values, circuit_forward, circuit_graph, from_circuit_json, metric_values
from neurosurgeon.cli import main

# A word-level vocabulary, so one word is one token and a two-word answer is two.
WORDS = ["[UNK]", "[PAD]", "the", "cat", "dog", "sat", "ran", "on", "mat", "rug", "a", "big", "small", "red", "blue",
         "and", "then", "it", "was", "here"]
HEADER = ["clean", "corrupted", "answer", "wrong"]
FAST = ["--steps", "12", "--null-size", "12", "--threads", "1", "--device", "cpu", "-q"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The checks' own forwards of a tiny model: on a busy machine more threads only wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tokenizer():
    # As tests/cli/test_cli.py builds its tokenizer: a WordLevel model split on whitespace.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def _write(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _pairs(model, n=10, seed=1):
    """Prompts of 4 and 5 words, each corrupted in its last word; the answer is the model's top word
    after the clean prompt, the wrong one its top word after the corrupted (or the clean second)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        clean = torch.randint(2, len(WORDS), (4 + i % 2,), generator=g)
        corrupted = clean.clone()
        corrupted[-1] = (clean[-1] - 2 + 1 + torch.randint(len(WORDS) - 3, (), generator=g)) % (len(WORDS) - 2) + 2
        with torch.no_grad():
            top = model(clean[None]).logits[0, -1].topk(2).indices.tolist()
            other = int(model(corrupted[None]).logits[0, -1].argmax())
        wrong = other if other != top[0] else top[1]
        rows.append([" ".join(WORDS[t] for t in clean), " ".join(WORDS[t] for t in corrupted), WORDS[top[0]],
                     WORDS[wrong]])
    return rows


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("circuit")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                       bos_token_id=0, eos_token_id=0, initializer_range=0.3)).eval()
    model.save_pretrained(root / "lm")
    _tokenizer().save_pretrained(root / "lm")
    rows = _pairs(model)
    _write(root / "pairs.csv", rows)
    return root, model, rows


@pytest.fixture(scope="module")
def run(lm, tmp_path_factory):
    root, _, _ = lm
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["circuit", "--model", str(root / "lm"), "--data", str(root / "pairs.csv"), "--edges", "10",
                 "--restarts", "1", "--out", str(out), *FAST]) == 0
    return out, json.loads((out / "results.json").read_text())


def _recomputed(model, graph, rows, mask):
    """The mean logit difference of the circuit ``mask`` under resample ablation, pair by pair."""
    tok, values = _tokenizer(), []
    for clean, corrupted, answer, wrong in rows:
        ids, cor = (torch.tensor([tok(t)["input_ids"]]) for t in (clean, corrupted))
        a = ablation_values(model, graph, "resample", ids, corrupted=cor)
        with torch.no_grad():
            logits = circuit_forward(model, graph, ids, mask=mask, ablated=a).output
        values.append(float(metric_values("logit_diff", logits, answers=torch.tensor(tok(answer)["input_ids"]),
                                          wrong=torch.tensor(tok(wrong)["input_ids"]))[0]))
    return sum(values) / len(values)


def test_the_run_writes_four_files_and_nothing_else(run):
    out, r = run
    assert sorted(p.name for p in out.iterdir()) == ["circuit.json", "circuit.png", "faithfulness.png", "results.json"]
    assert not [p for p in out.parent.iterdir() if p.name != "out"]  # the temporary directory is gone
    for name in ("circuit.png", "faithfulness.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert r["files"] == {name: str(out / name) for name in ("circuit.json", "circuit.png", "faithfulness.png",
                                                               "results.json")}


def test_circuit_json_holds_exactly_the_edges_asked_for(run, lm):
    out, r = run
    _, model, _ = lm
    graph = circuit_graph(model)
    mask, scores = from_circuit_json(graph, out / "circuit.json")
    assert int(mask.sum()) == 10 == r["circuit"]["edges"] == r["config"]["edges"]
    assert graph.edge_names(mask) == r["circuit"]["names"]
    # the kept edges are the 10 of largest trained theta
    assert bool(scores[mask.bool()].min() >= scores[~mask.bool()].max())
    assert r["graph"]["edges"] == graph.num_edges == 46
    assert r["config"]["target_sparsity"] == pytest.approx(1 - 10 / 46)


def test_results_numbers_are_the_circuits_own(run, lm):
    out, r = run
    _, model, rows = lm
    graph = circuit_graph(model)
    mask, _ = from_circuit_json(graph, out / "circuit.json")
    ev, c = r["evidence"], r["circuit"]
    assert c["score"] == pytest.approx(_recomputed(model, graph, rows, mask), abs=1e-5)
    assert ev["full"] == pytest.approx(_recomputed(model, graph, rows, torch.ones(graph.num_edges)), abs=1e-5)
    assert ev["empty"] == pytest.approx(_recomputed(model, graph, rows, torch.zeros(graph.num_edges)), abs=1e-5)
    assert c["faithfulness"] == pytest.approx((c["score"] - ev["empty"]) / (ev["full"] - ev["empty"]))
    curve = ev["curve"]
    assert 10 in curve["sizes"] and curve["sizes"] == sorted(set(curve["sizes"])) and curve["sizes"][-1] == 46
    i = curve["sizes"].index(10)
    assert (curve["score"][i], curve["faithfulness"][i]) == (c["score"], c["faithfulness"])
    assert r["data"] == {"pairs": 10, "batches": 2, "lengths": [4, 5]}
    assert ev["chance"]["above_chance"] and ev["chance"]["chance"] == 0.0  # the answers are the model's top words
    assert len(r["training"]["history"]) == 12


def test_every_size_has_its_null_and_p_value(run):
    _, r = run
    for name in ("uniform", "in_degree"):
        null = r["evidence"]["null"][name]
        assert null["num"] == 12 and null["sizes"][-1] is None  # no null for the full circuit
        for entry, size, score in zip(null["sizes"][:-1], r["evidence"]["curve"]["sizes"], r["evidence"]["curve"]["score"]):
            assert entry["size"] == size and entry["value"] == score
            assert entry["null_q05"] <= entry["null_median"] <= entry["null_q95"]
            # (1 + #random circuits at least as good) / (K + 1)
            assert round(entry["p_value"] * 13, 9) in range(1, 14)
            assert entry["within_band"] == (entry["null_q05"] <= score <= entry["null_q95"])
        assert r["circuit"]["null"][name] == null["sizes"][r["evidence"]["curve"]["sizes"].index(10)]
    flagged = {w["data"]["null"]: w["data"]["sizes"] for w in r["warnings"] if w["kind"] == "circuit_within_null"}
    for name, null in r["evidence"]["null"].items():
        assert flagged.get(name, []) == [e["size"] for e in null["sizes"] if e is not None and e["within_band"]]


def test_stability_over_restarts(run):
    _, r = run
    s = r["stability"]
    assert s["runs"] == 2 and len(s["pairs"]) == 1
    pair = s["pairs"][0]
    assert (pair["kept_a"], pair["kept_b"], pair["total"]) == (10, 10, 46)
    assert s["mean_iou"] == pair["iou"] == pair["intersection"] / (20 - pair["intersection"])


def test_a_task_with_nothing_to_measure_is_flagged(lm, tmp_path, capsys):
    root, _, rows = lm
    # corrupted == clean: resampling removes nothing; answers swapped: the model prefers the wrong one
    data = _write(tmp_path / "same.csv", [[clean, clean, wrong, answer] for clean, _, answer, wrong in rows])
    out = tmp_path / "out"
    assert main(["circuit", "--model", str(root / "lm"), "--data", str(data), "--edges", "5", "--sizes", "5", "20",
                 "--nulls", "uniform", "--out", str(out), *FAST]) == 0
    r = json.loads((out / "results.json").read_text())
    assert [w["kind"] for w in r["warnings"]] == ["faithfulness_undefined", "full_model_at_chance",
                                                  "circuit_within_null"]
    assert r["circuit"]["faithfulness"] is None and r["evidence"]["curve"]["area"] is None  # NaN written as null
    assert r["evidence"]["curve"]["sizes"] == [5, 20] and list(r["evidence"]["null"]) == ["uniform"]
    printed = capsys.readouterr().out
    assert "faithfulness_undefined" in printed and "full_model_at_chance" in printed


def test_mean_ablation_averages_every_corrupted_prompt_cut_to_the_shortest(lm, tmp_path):
    root, model, rows = lm
    out = tmp_path / "out"
    assert main(["circuit", "--model", str(root / "lm"), "--data", str(root / "pairs.csv"), "--edges", "5",
                 "--metric", "kl", "--ablation", "mean", "--sizes", "5", "--nulls", "uniform", "--out", str(out),
                 *FAST]) == 0
    r = json.loads((out / "results.json").read_text())
    ev = r["evidence"]
    assert ev["full"] == pytest.approx(0.0, abs=1e-5)  # the full model's KL to itself
    assert ev["chance"]["chance"] is None and not ev["higher_is_better"]
    graph, tok = circuit_graph(model), _tokenizer()
    reference = torch.tensor([tok(corrupted)["input_ids"][:4] for _, corrupted, _, _ in rows])  # shortest: 4 words
    a = ablation_values(model, graph, "mean", reference=reference)
    kl = []
    for clean, *_ in rows:
        ids = torch.tensor([tok(clean)["input_ids"]])
        with torch.no_grad():
            empty = circuit_forward(model, graph, ids, mask=torch.zeros(graph.num_edges), ablated=a).output
            kl.append(float(metric_values("kl", empty, full_logits=model(ids).logits)[0]))
    assert ev["empty"] == pytest.approx(sum(kl) / len(kl), rel=1e-4)


# -- bad input: exit status 2, a message naming the file, line or option, nothing written --------------

def _refused(capsys, tmp_path, argv) -> str:
    out = tmp_path / "out"
    assert main([argv[0], *FAST, *argv[1:], "--out", str(out)]) == 2  # the option under test comes last
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    err = capsys.readouterr().err
    assert "neurosurgeon circuit: error:" in err
    return err


@pytest.mark.parametrize("rows, header, needles", [
    ([["the cat", "the dog", "sat"]], ["clean", "corrupted", "answer"], ["missing wrong"]),
    ([["the cat", "the dog", "sat", "ran"], ["the cat", "the dog", "big red", "ran"]], HEADER,
     ["line 3", "answer 'big red' is 2 tokens", "single tokens"]),
    ([["the cat", "the dog", "sat", "ran"], ["the cat sat", "the dog", "ran", "sat"]], HEADER,
     ["line 3", "3 tokens", "corrupted one 2"]),
    ([["the cat", "the dog", "sat", "sat"]], HEADER, ["line 2", "same token"]),
    ([["the cat", "", "sat", "ran"]], HEADER, ["line 2", "empty corrupted"]),
    ([], HEADER, ["no pairs"]),
])
def test_malformed_pairs_name_file_and_line(lm, tmp_path, capsys, rows, header, needles):
    root, _, _ = lm
    data = _write(tmp_path / "bad.csv", rows, header)
    err = _refused(capsys, tmp_path, ["circuit", "--model", str(root / "lm"), "--data", str(data), "--edges", "5"])
    assert str(data) in err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("extra, needle", [
    (["--edges", "47"], "--edges 47: the model's graph has 46 edges"),
    (["--edges", "5", "--target-sparsity", "1.5"], "--target-sparsity"),
    (["--edges", "5", "--sizes", "3", "99"], "--sizes [99]"),
    (["--edges", "5", "--null-size", "1"], "--null-size"),
])
def test_bad_options_name_the_option(lm, tmp_path, capsys, extra, needle):
    root, _, _ = lm
    err = _refused(capsys, tmp_path, ["circuit", "--model", str(root / "lm"), "--data", str(root / "pairs.csv"),
                                      *extra])
    assert needle in err


def test_missing_paths_and_a_non_causal_model(lm, tmp_path, capsys):
    root, _, _ = lm
    err = _refused(capsys, tmp_path, ["circuit", "--model", str(root / "nope"), "--data", str(root / "pairs.csv"),
                                      "--edges", "5"])
    assert "--model" in err and "no such directory" in err
    err = _refused(capsys, tmp_path, ["circuit", "--model", str(root / "lm"), "--data", str(tmp_path / "x.csv"),
                                      "--edges", "5"])
    assert "--data" in err and "no such file" in err


def test_argparse_refuses_unknown_metric_and_edges_zero(lm, tmp_path, capsys):
    root, _, _ = lm
    for extra, needle in ((["--edges", "5", "--metric", "bleu"], "invalid choice: 'bleu'"),
                          (["--edges", "0"], "positive integer")):
        with pytest.raises(SystemExit) as e:
            main(["circuit", "--model", str(root / "lm"), "--data", str(root / "pairs.csv"), *extra,
                  "--out", str(tmp_path / "out")])
        assert e.value.code == 2 and needle in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_the_parser_lists_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{demo,analyze,compare,circuit}" in capsys.readouterr().out
