"""The command line: a reduced demo and analyze runs checked by the contents of what they write,
and the errors a user meets for bad paths, patterns and data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

import neurosurgeon as ns
from neurosurgeon.cli import main
from neurosurgeon.cli import task as T

# Reduced settings: a few training steps and baselines; the checks are about the outputs' contents.
FAST = ["--train-steps", "150", "--epochs", "3", "--steps-per-epoch", "8", "--batch-size", "64", "--seeds", "6",
        "--circuit-null", "20",
        "--l0-lambda", "2", "--quiet"]
SEEDS = 6


def _check_results(r: dict, seeds: int, subtasks: list[str]) -> None:
    for key in ("command", "config", "model", "subtasks", "target_subtask", "discovery", "subnetwork", "conditions",
                "baselines", "p_values", "timing", "files"):
        assert key in r, key
    assert r["subtasks"] == subtasks
    assert r["target_subtask"] == subtasks[0]
    assert set(r["conditions"]) == {"full", "subnetwork", "zero_ablate", "random_ablate"}
    for accs in r["conditions"].values():
        assert set(accs) == set(subtasks)
        assert all(0.0 <= a <= 1.0 for a in accs.values())
    for mode in ("randomly_sampled", "complement_sampled"):
        stats = r["baselines"][mode]
        if stats is None:  # allowed only when the subnetwork is more than half a layer
            assert mode == "complement_sampled" and mode in r["baseline_errors"]
            continue
        for s in subtasks:
            values = stats[s]["values"]
            assert len(values) == seeds
            assert all(0.0 <= v <= 1.0 for v in values)
            assert stats[s]["mean"] == pytest.approx(sum(values) / seeds)
    for cond in ("zero_ablate", "random_ablate"):
        for mode, ps in r["p_values"][cond].items():
            values = r["baselines"][mode]
            for s, p in ps.items():
                assert 0.0 < p <= 1.0
                # the empirical p-value is the rank among the baselines
                rank = sum(v <= r["conditions"][cond][s] + 1e-9 for v in values[s]["values"])
                assert p == pytest.approx((rank + 1) / (seeds + 1))
    sub = r["subnetwork"]
    assert sub["kept"] == sum(v["kept"] for v in sub["layers"].values())
    assert sub["total"] == sum(v["total"] for v in sub["layers"].values())
    assert 0.0 <= sub["density"] <= 1.0
    assert len(r["discovery"]["history"]) == r["config"]["epochs"]
    for row in r["discovery"]["history"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["density"] <= 1.0


def _check_png(path) -> None:
    import matplotlib.image as mpimg

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # No subcommand: options alone run the demo, as a bare `neurosurgeon` does.
    assert main([*FAST, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_demo_results_json_contents(demo_run):
    out, r = demo_run
    assert r["command"] == "demo"
    _check_results(r, SEEDS, ["add", "copy"])
    assert r["config"]["seeds"] == SEEDS and r["config"]["method"] == "continuous_sparsification"
    assert len(r["subnetwork"]["layers"]) == 8  # attention and MLP projections of both blocks
    assert r["subnetwork"]["total"] == 65536
    assert r["files"]["plot"].endswith("subnetwork.png")


def test_demo_circuit_part_finds_the_induction_circuit(demo_run):
    out, r = demo_run
    c = r["circuit"]
    # The shipped model's circuit: the previous-token head A0.1 feeds the induction head A1.3's key.
    assert c["edges"] == 12 and len(c["names"]) == 12 and c["of"] == 110
    assert "A0.1->A1.3.K" in c["names"] and "A1.3->Resid End" in c["names"]
    assert c["faithfulness"] > 0.9
    for null in ("uniform", "in_degree"):
        assert c["null"][null]["null_size"] == 20 and c["null"][null]["p_value"] == 1 / 21
    inner = json.loads((out / "circuit" / "results.json").read_text())
    assert inner["circuit"]["names"] == c["names"] and inner["command"] == "circuit"
    for name in ("circuit.png", "faithfulness.png"):
        _check_png(out / "circuit" / name)
    assert r["timing"]["circuit_s"] > 0


def test_demo_trains_the_base_model(demo_run):
    _, r = demo_run
    # even 150 steps learn the copy sub-task well above chance (0.1)
    assert r["conditions"]["full"]["copy"] > 0.5


def test_demo_masks_load_into_a_fresh_model(demo_run):
    out, r = demo_run
    from safetensors.torch import load_file

    tensors = load_file(out / "masks.safetensors")
    assert "transformer.h.0.attn.c_attn.weight_mask_params" in tensors
    model = T.make_demo_model(0)
    ns.inject_masks(model, r["config"]["layers"], key=0)
    ns.load_masks(model, out / "masks.safetensors")
    kept = sum(int(h.sum()) for h in ns.subnetwork(model).values())
    assert kept == r["subnetwork"]["kept"]


def test_demo_png_is_an_image(demo_run):
    out, _ = demo_run
    _check_png(out / "subnetwork.png")


def test_demo_prints_table(tmp_path, capsys):
    args = ["demo", "--no-circuit", "--train-steps", "20", "--epochs", "1", "--steps-per-epoch", "2", "--seeds", "3",
            "--method", "hard_concrete", "--targets", "transformer.h.1.mlp.*", "--out", str(tmp_path)]
    assert main(args) == 0
    text = capsys.readouterr().out
    for needle in ("full model", "subnetwork zero-ablated", "randomly_sampled (K=3)", "complement_sampled (K=3)",
                   "empirical p-value", "epoch   1/1"):
        assert needle in text
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["config"]["method"] == "hard_concrete"
    assert list(r["subnetwork"]["layers"]) == ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]
    _check_results(r, 3, ["add", "copy"])


def test_synthetic_task_is_seeded_and_labelled():
    a, b = T.SyntheticTask(3).sample(64, split="test"), T.SyntheticTask(3).sample(64, split="test")
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    add, copy = a.of_subtask(0), a.of_subtask(1)
    assert torch.equal(add.labels, (add.input_ids[:, 0] + add.input_ids[:, 1]) % 10)
    assert torch.equal(copy.labels, copy.input_ids[:, 3])
    assert (add.input_ids[:, -1] == 10).all() and (copy.input_ids[:, -1] == 11).all()
    assert not torch.equal(a.input_ids, T.SyntheticTask(3).sample(64, split="train").input_ids)


# -- analyze ---------------------------------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "good", "bad", "fine", "awful", "movie", "film", "yes", "no", "is", "the"]
ROWS = [("good movie", 1, "sentiment"), ("bad movie", 0, "sentiment"), ("fine film", 1, "sentiment"),
        ("awful film", 0, "sentiment"), ("good film", 1, "sentiment"), ("bad film", 0, "sentiment"),
        ("the movie is", 0, "noun"), ("the film is", 1, "noun"), ("is the movie", 0, "noun"), ("is the film", 1, "noun")]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cls = BertForSequenceClassification(BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=2, max_position_embeddings=16))
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                    bos_token_id=None, eos_token_id=None))
    for name, model in (("bert", cls), ("gpt2", lm)):
        model.save_pretrained(root / name)
        _tokenizer().save_pretrained(root / name)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "subtask"])
        w.writerows(ROWS)
    with open(root / "data.jsonl", "w") as f:
        for text, label, sub in ROWS:
            f.write(json.dumps({"text": text, "label": "yes" if label else "no", "subtask": sub}) + "\n")
    return root


ANALYZE_FAST = ["--epochs", "2", "--steps-per-epoch", "4", "--seeds", "5", "--quiet"]


def test_analyze_sequence_classifier_csv(hf_dirs, tmp_path):
    out = tmp_path / "out"
    assert main(["analyze", "--model", str(hf_dirs / "bert"), "--data", str(hf_dirs / "data.csv"),
                 "--subtask", "noun", "--out", str(out), "--lr", "0.5", *ANALYZE_FAST]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["command"] == "analyze" and r["config"]["task"] == "classification"
    _check_results(r, 5, ["noun", "sentiment"])
    # default targets: every Linear but the classifier head
    assert "classifier" not in r["subnetwork"]["layers"] and "bert.pooler.dense" not in r["subnetwork"]["layers"]
    assert "bert.encoder.layer.0.attention.self.query" in r["subnetwork"]["layers"]
    assert sum(r["n_test"].values()) == 3  # a quarter of each sub-task, at least one
    _check_png(out / "subnetwork.png")


def test_analyze_causal_lm_jsonl_with_targets(hf_dirs, tmp_path):
    out = tmp_path / "out"
    assert main(["analyze", "--model", str(hf_dirs / "gpt2"), "--data", str(hf_dirs / "data.jsonl"),
                 "--targets", "transformer.h.0.mlp.*", "--out", str(out), *ANALYZE_FAST]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["task"] == "causal-lm" and r["model"]["classes"] == ["no", "yes"]
    assert list(r["subnetwork"]["layers"]) == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    _check_results(r, 5, ["sentiment", "noun"])


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    return err


def test_analyze_missing_paths(hf_dirs, tmp_path, capsys):
    err = _error(capsys, ["analyze", "--model", str(tmp_path / "nope"), "--data", str(hf_dirs / "data.csv"), "-q"])
    assert "--model" in err and "no such directory" in err
    err = _error(capsys, ["analyze", "--model", str(hf_dirs / "bert"), "--data", str(tmp_path / "x.csv"), "-q"])
    assert "--data" in err and "no such file" in err
    err = _error(capsys, ["analyze", "--model", str(tmp_path), "--data", str(hf_dirs / "data.csv"), "-q"])
    assert "config.json" in err


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("a.csv", "text,target\nhi,1\n", "missing label"),
        ("b.csv", "text,label\nhi,1,extra\n", "line 2"),
        ("c.csv", "text,label\n", "no examples"),
        ("d.jsonl", '{"text": "good", "label": 1}\nnot json\n', "line 2: not valid JSON"),
        ("e.jsonl", '{"text": "good"}\n', "\"label\""),
        ("f.txt", "good,1\n", "unknown format"),
        ("g.csv", "text,label\ngood movie,7\nbad movie,0\n", "out of range"),
        ("h.csv", "text,label,subtask\ngood movie,1,a\nbad movie,0,\n", "missing subtask"),
    ],
)
def test_analyze_malformed_data(hf_dirs, tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    err = _error(capsys, ["analyze", "--model", str(hf_dirs / "bert"), "--data", str(path), "-q",
                          "--out", str(tmp_path / "out")])
    assert needle in err


def test_unknown_layer_pattern_lists_the_maskable_layers(hf_dirs, tmp_path, capsys):
    err = _error(capsys, ["analyze", "--model", str(hf_dirs / "bert"), "--data", str(hf_dirs / "data.csv"),
                          "--targets", "encoder.*.nonexistent", "-q", "--out", str(tmp_path)])
    assert "encoder.*.nonexistent" in err and "bert.encoder.layer.0.attention.self.query" in err
    err = _error(capsys, ["demo", "--targets", "transformer.h.9.*", "--train-steps", "1", "-q", "--out", str(tmp_path)])
    assert "transformer.h.9.*" in err and "transformer.h.0.attn.c_attn" in err


def test_unknown_subtask_and_device(hf_dirs, tmp_path, capsys):
    err = _error(capsys, ["analyze", "--model", str(hf_dirs / "bert"), "--data", str(hf_dirs / "data.csv"),
                          "--subtask", "grammar", "-q", "--out", str(tmp_path)])
    assert "'grammar'" in err and "sentiment" in err
    err = _error(capsys, ["demo", "--device", "tpu:x", "-q", "--out", str(tmp_path)])
    assert "--device" in err


def test_bad_option_values_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--seeds", "0"])
    assert e.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--method", "magic"])
    assert "unknown method" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "neurosurgeon", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("neurosurgeon ")


def test_demo_is_reproducible(tmp_path):
    tiny = ["demo", "--no-circuit", "--train-steps", "20", "--epochs", "2", "--steps-per-epoch", "2", "--seeds", "3", "-q"]
    runs = []
    for name in ("a", "b"):
        assert main([*tiny, "--out", str(tmp_path / name)]) == 0
        r = json.loads((tmp_path / name / "results.json").read_text())
        runs.append({k: r[k] for k in ("conditions", "baselines", "p_values", "subnetwork")})
    assert runs[0] == runs[1]


def test_read_examples_csv_with_bom_and_jsonl_without_subtask(tmp_path):
    from neurosurgeon.cli.analyze import read_examples

    p = tmp_path / "x.csv"
    p.write_bytes("text,label,subtask\ngood movie,1,a\nbad film,0,b\n".encode("utf-8-sig"))
    rows = read_examples(p)
    assert [(r["text"], r["label"], r["subtask"]) for r in rows] == [("good movie", "1", "a"), ("bad film", "0", "b")]
    q = tmp_path / "y.jsonl"
    q.write_text('{"text": "good", "label": 1}\n\n{"text": "bad", "label": 0}\n')
    assert [r["subtask"] for r in read_examples(q)] == ["all", "all"]
