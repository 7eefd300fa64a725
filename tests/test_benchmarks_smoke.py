"""The benchmark suite (``python -m benchmarks.run``) still runs: its smoke mode (tiny shapes,
one repeat) completes and reports every workload in the documented structure. No timing is
asserted anywhere: the machines are shared and noisy, and speed is the benchmark's business."""

import math
import statistics

import pytest
import torch

from benchmarks import _timing as timing
from benchmarks import run as run_mod


@pytest.fixture(scope="module")
def smoke_report():
    return run_mod.run(smoke=True, threads=1, log=lambda *a: None)


def test_smoke_report_covers_workloads_1_to_9(smoke_report):
    assert [w["id"] for w in smoke_report["workloads"]] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert smoke_report["config"]["smoke"] is True
    for key in ("cpu", "torch", "threads"):
        assert key in smoke_report["env"]


def test_smoke_results_have_timings_and_well_formed_ratios(smoke_report):
    for w in smoke_report["workloads"]:
        assert "error" not in w, w.get("error")
        assert w["timings"], f"workload {w['id']} timed nothing"
        for name, t in w["timings"].items():
            assert len(t["times_s"]) >= 1 and t["median_s"] > 0, name
        assert w["ratios"], f"workload {w['id']} reports no ratio"
        for row in w["ratios"]:
            assert set(row) >= {"name", "value", "target", "met"}
            if "interval" in row:  # one round: nothing to resample
                assert row["interval"] is None
            if row["value"] is not None:  # seconds are a difference of medians: any sign
                assert math.isfinite(row["value"]) and (row.get("unit") == "s" or row["value"] > 0)
            if row["value"] is None or row["target"] is None:
                assert row["met"] is None


def test_original_column_present_exactly_when_importable(smoke_report):
    names = {n for w in smoke_report["workloads"] for n in w["timings"]}
    has_orig = any("orig" in n for n in names)
    assert has_orig == smoke_report["original_available"]


def test_markdown_names_machine_versions_threads_and_every_ratio(smoke_report):
    md = run_mod.to_markdown(smoke_report)
    for text in ("## Machine", "torch:", "threads:", "| # | ratio | value | 95% interval | target | met |"):
        assert text in md
    for w in smoke_report["workloads"]:
        for row in w["ratios"]:
            assert row["name"] in md


def test_guard_rows_are_the_limits_the_library_is_held_to(smoke_report):
    # Each guard has its target, so RESULTS.md says met / not met for every one of them.
    guards = sorted((w["id"], r["target"]) for w in smoke_report["workloads"] for r in w["ratios"] if r.get("guard"))
    assert guards == [(1, "<= 1.06"), (1, "<= 1.4"), (2, "<= 1.02"), (2, "<= 1.08"), (3, ">= 25"), (5, "<= 1.05"),
                      (8, "<= 0.3"), (8, "<= 0.3"), (9, "<= 1"), (9, "<= 1.6"), (9, "<= 2.5")]
    md = run_mod.to_markdown(smoke_report)
    assert md.count("(guard) |") == len(guards)


def test_cold_start_rows_are_seconds_and_record_the_compiler_import(smoke_report):
    w8 = next(w for w in smoke_report["workloads"] if w["id"] == 8)
    assert {"eval:masked:first", "eval:plain:warm", "train:masked:first", "train:plain:warm"} <= set(w8["timings"])
    assert len(w8["ratios"]) == 2
    for row in w8["ratios"]:
        assert row["unit"] == "s" and row["value"] is not None
        assert isinstance(row["info"]["torch._dynamo imported"], bool)
        assert row["met"] == (row["value"] <= 0.3 and not row["info"]["torch._dynamo imported"])


def test_machine_section_is_read_at_the_start_of_the_run(monkeypatch):
    # The date and "load average at start" describe the run's start, also in the partial reports
    # a long run writes after each workload; only "load average at end" is read at the end.
    stamps = iter(["start", "later", "later"])
    monkeypatch.setattr(run_mod, "environment", lambda threads: {"date": next(stamps)})
    partials = []
    report = run_mod.run(smoke=True, only={4}, threads=1, log=lambda *a: None, partial=partials.append)
    assert report["env"]["date"] == "start" and [p["env"]["date"] for p in partials] == ["start"]


def test_workload_5_is_also_timed_at_1024_tokens(smoke_report):
    # The full suite times the GPT-2 step at 4 x 256 tokens as well as at 2 x 256.
    b, n = run_mod.workloads.FULL["gpt2_batch_default"]
    assert b * n == 1024 and n == run_mod.workloads.FULL["gpt2_batch"][1]
    w5 = next(w for w in smoke_report["workloads"] if w["id"] == 5)
    assert {"default:floor", "default:ours_cs"} <= set(w5["timings"])
    row = next(r for r in w5["ratios"] if r["name"].endswith("CS train step: ours / floor") and r["name"].startswith("at "))
    assert row["value"] is not None


def test_circuits_workload_times_every_contender_against_its_floor(smoke_report):
    # Workload 9: the edge-masked train step, a binary-circuit forward and K vmapped circuits,
    # each beside the plain model and the floors that bound it (NOTES.md).
    w9 = next(w for w in smoke_report["workloads"] if w["id"] == 9)
    assert {f"train:{n}" for n in ("plain", "plain_frozen", "edge", "node", "sums", "node+sums")} <= set(w9["timings"])
    assert {f"forward:{n}" for n in ("plain", "edge", "node", "sums", "node+sums")} <= set(w9["timings"])
    assert {"evaluate:vmapped", "evaluate:loop"} <= set(w9["timings"])
    assert all(r["value"] is not None for r in w9["ratios"])
    assert w9["info"]["writers_floor_mib"] > 0


def test_circuits_train_step_memory_is_measured_in_a_fresh_process():
    from benchmarks import _memory

    if not _memory.can_measure():
        pytest.skip("peak RSS needs Linux /proc")
    mem = _memory.measure_in_subprocess("edge", run_mod.workloads.SMOKE, 1, builder="circuit_train_step")
    assert mem["peak_rss_mib"] > 0 and mem["rss_before_mib"] > 0 and "step_peak_above_before_mib" in mem

# -- the ratio's bootstrap interval -------------------------------------------------------------------


def _timings(**times):
    return {n: {"median_s": statistics.median(ts), "times_s": list(ts)} for n, ts in times.items()}


def test_interval_is_paired_over_rounds():
    # Each round slowed both contenders alike (drift), and num took exactly 1.1x den in every
    # round: paired, the ratio has no noise at all; resampled apart, it would spread widely.
    den = [1.0, 3.0, 0.5, 2.0, 1.5, 4.0, 0.8, 2.5]
    t = _timings(num=[1.1 * v for v in den], den=den)
    lo, hi = timing.ratio_interval(t, "num", "den")
    assert lo == pytest.approx(1.1) and hi == pytest.approx(1.1)
    t_unpaired = _timings(num=[1.1 * v for v in den], den=den + [1.0])  # different round counts
    lo, hi = timing.ratio_interval(t_unpaired, "num", "den")
    assert hi - lo > 0.5


def test_interval_brackets_the_ratio_and_is_reproducible():
    g = torch.Generator().manual_seed(3)
    noise = torch.rand(2, 31, generator=g).double() * 0.2 + 1.0
    t = _timings(num=(1.05 * noise[0]).tolist(), den=noise[1].tolist())
    r = timing.ratio(t, "num", "den")
    lo, hi = timing.ratio_interval(t, "num", "den")
    assert lo < r < hi and hi - lo < 0.3
    assert timing.ratio_interval(t, "num", "den") == (lo, hi)
    narrow = timing.ratio_interval(t, "num", "den", level=0.5)
    assert lo < narrow[0] <= narrow[1] < hi


def test_interval_needs_two_rounds_of_both_contenders():
    t = _timings(a=[1.0, 2.0], b=[1.0], c=[2.0, 1.0])
    assert timing.ratio_interval(t, "a", "b") is None
    assert timing.ratio_interval(t, "a", "missing") is None
    assert timing.ratio_interval(t, "a", "c") is not None


def test_verdict_marks_a_target_inside_the_interval_as_within_noise():
    row = {"met": False, "target": "<= 1.05", "interval": [1.03, 1.09]}
    assert run_mod.verdict(row) == "**no** (*within noise*)"
    assert run_mod.verdict({**row, "interval": [1.06, 1.09]}) == "**no**"
    assert run_mod.verdict({"met": True, "target": ">= 10", "interval": [9.5, 11.0]}) == "yes (*within noise*)"
    assert run_mod.verdict({"met": True, "target": ">= 10", "interval": None}) == "yes"
    assert run_mod.verdict({"met": None, "target": None, "interval": [0.9, 1.1]}) == "-"
