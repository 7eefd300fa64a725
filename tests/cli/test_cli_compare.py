"""``neurosurgeon compare`` and the demo's overlap of its two sub-tasks' subnetworks."""

from __future__ import annotations

import json

import pytest
import torch
from model_zoo import build

import neurosurgeon as ns
from neurosurgeon.cli import main
from neurosurgeon.functional.overlap import hypergeometric_sf

TARGETS = ["transformer.h.*.attn.*", "transformer.h.*.mlp.*"]
# The overlap's bookkeeping needs no well-trained model: a few steps of everything.
FAST = ["--train-steps", "40", "--epochs", "2", "--steps-per-epoch", "4", "--batch-size", "64", "--seeds", "2",
        "--l0-lambda", "2", "--quiet"]


def masked(seed, name="gpt2", targets=TARGETS, **kw):
    model = build(name)
    ns.inject_masks(model, targets, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ns.mask_layers(model).values():
            if hasattr(layer, "weight_mask_params"):
                p = layer.weight_mask_params
                p.copy_(torch.rand(p.shape, generator=g) - 0.7)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    build("gpt2").save_pretrained(d / "model")
    for name, seed in (("a", 1), ("b", 2)):
        (d / name).mkdir()
        ns.save_masks(masked(seed), d / name / "masks.safetensors")
    return d


def test_compare_writes_figure_and_json_equal_to_compare_subnetworks(files, tmp_path, capsys):
    a, b = files / "a" / "masks.safetensors", files / "b" / "masks.safetensors"
    assert main(["compare", str(a), str(b), "--model", str(files / "model"), "--granularity", "block",
                 "--out", str(tmp_path), "-q"]) == 0
    r = json.loads((tmp_path / "comparison.json").read_text())
    expected = ns.compare_subnetworks(a, b, model=build("gpt2")).to_dict()
    assert {k: r[k] for k in expected} == expected
    assert r["unit"] == "weight" and len(r["heads"]["transformer.h.0"]) == 2
    assert r["inputs"]["labels"] == ["a", "b"]
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "IoU" in capsys.readouterr().out


def test_compare_reads_output_directories_and_counts_mask_units_without_a_model(files, tmp_path):
    assert main(["compare", str(files / "a"), str(files / "b"), "--out", str(tmp_path), "-q"]) == 0
    r = json.loads((tmp_path / "comparison.json").read_text())
    assert r["unit"] == "mask unit" and r["heads"] == {}
    assert r["total"]["total"] == sum(v.numel() for v in ns.subnetwork(masked(1)).values())


def test_compare_errors_are_clear(files, tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    ns.save_masks(masked(3, targets=["transformer.h.*.attn.*"]), other)
    (tmp_path / "empty").mkdir()
    mag = tmp_path / "mag.safetensors"
    ns.save_masks(masked(0, strategy="magnitude_pruning"), mag)
    a = str(files / "a" / "masks.safetensors")
    cases = [
        ([a, str(other)], "different models"),
        ([a, str(tmp_path / "empty")], "without masks.safetensors"),
        ([a, str(tmp_path / "missing.safetensors")], "no such file"),
        ([str(mag), str(mag)], "--model"),
        ([a, a, "--granularity", "block"], "needs --model"),
        ([a, a, "--model", str(tmp_path / "empty")], "no config.json"),
    ]
    for argv, needle in cases:
        assert main(["compare", *argv, "--out", str(tmp_path / "out"), "-q"]) == 2
        assert needle in capsys.readouterr().err


def test_compare_block_granularity_on_an_unknown_architecture_says_so(tmp_path, capsys):
    build("resnet").save_pretrained(tmp_path / "resnet")
    model = build("resnet")
    ns.inject_masks(model, [torch.nn.Conv2d])
    ns.save_masks(model, tmp_path / "m.safetensors")
    m = str(tmp_path / "m.safetensors")
    assert main(["compare", m, m, "--model", str(tmp_path / "resnet"), "--granularity", "block",
                 "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "no known architecture for model_type 'resnet'" in err and "--granularity tensor" in err
    assert main(["compare", m, m, "--model", str(tmp_path / "resnet"), "--out", str(tmp_path / "out"), "-q"]) == 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--no-circuit", *FAST, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_demo_reports_the_two_subtasks_overlap_against_chance(demo_run):
    out, r = demo_run
    o = r["overlap"]
    assert o["subtasks"] == ["add", "copy"]
    t = o["total"]
    # A is the subnetwork the demo saved and tested; the whole-network row adds up its layers.
    assert t["kept_a"] == r["subnetwork"]["kept"] and t["total"] == r["subnetwork"]["total"]
    for key in ("kept_a", "kept_b", "intersection", "total"):
        assert t[key] == sum(layer[key] for layer in o["layers"].values())
    assert t["expected_intersection"] == pytest.approx(t["kept_a"] * t["kept_b"] / t["total"])
    assert t["p_value"] == pytest.approx(hypergeometric_sf(t["intersection"], t["total"], t["kept_a"], t["kept_b"]))
    assert t["iou"] == pytest.approx(t["intersection"] / max(t["union"], 1))
    assert list(o["layers"]) == ["transformer.h.0", "transformer.h.1"] and len(o["heads"]["transformer.h.0"]) == 4
    assert "overlap_s" in r["timing"]


def test_demo_overlap_is_in_the_table_and_the_masks_compare_with_themselves(demo_run, tmp_path, capsys):
    from neurosurgeon.cli.report import format_table

    out, r = demo_run
    text = format_table(r)
    assert "overlap of the 'add' and 'copy' subnetworks" in text and "whole network" in text
    assert main(["compare", str(out), str(out), "--out", str(tmp_path), "-q"]) == 0
    same = json.loads((tmp_path / "comparison.json").read_text())["total"]
    assert same["iou"] == (1.0 if same["kept_a"] else 0.0) and same["kept_a"] == r["subnetwork"]["kept"]
