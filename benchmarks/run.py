"""Run the benchmark suite: write ``benchmarks/RESULTS.md`` and the raw results.

    python -m benchmarks.run            # full suite (GPT-2-small shapes)
    python -m benchmarks.run --quick    # full shapes, fewer warm-ups and original baselines, no GPT-2 compile
    python -m benchmarks.run --smoke    # tiny shapes, one repeat: checks the suite still runs
    python -m benchmarks.run --only 1,3 --threads 2 --output /tmp/results.md
    python -m benchmarks.run --render   # re-render RESULTS.md from the last run's raw results

Every ratio is measured in one process with the contenders interleaved (medians over the
repeats), at 2 threads by default; workload 8's cold start (seconds) takes fresh processes. The
original NeuroSurgeon 0.1.0 (``pip install neurosurgeon==0.1.0``, the ``bench`` extra) is a
contender when it is importable.

``RESULTS.md`` holds the current ratios only; what bounds each one is in ``benchmarks/NOTES.md``.
The raw results (every round's time) go to ``benchmarks/out/results.json``, which git ignores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch

from . import workloads

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_MD = os.path.join(HERE, "RESULTS.md")
RAW_JSON = os.path.join(HERE, "out", "results.json")  # git-ignored: raw results are not committed
# Environment entries kept out of RESULTS.md (they stay in the raw results).
_RAW_ONLY_ENV = ("date", "neurosurgeon (ours)")


def environment(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
           "platform": platform.platform(), "torch": torch.__version__, "threads": threads,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    try:
        from importlib.metadata import version
        env["NeuroSurgeon 0.1.0"] = version("neurosurgeon") if workloads.original() is not None else None
        env["neurosurgeon (ours)"] = "working tree"
    except Exception:
        env["NeuroSurgeon 0.1.0"] = None
    try:
        with open("/proc/loadavg") as f:
            env["load average at start"] = f.read().split()[:3]
    except OSError:
        pass
    return env


def run(*, smoke: bool = False, only=None, threads: int = 2, memory: str | None = None, log=print,
        partial=None, overrides=None) -> dict:
    """Run the workloads; returns {"env", "config", "workloads": [result dicts], "elapsed_s"}."""
    torch.set_num_threads(threads)
    cfg = dict(workloads.SMOKE if smoke else workloads.FULL)
    cfg.update(overrides or {})
    orig = workloads.original()
    memory = memory or ("inprocess-skip" if smoke else "subprocess")
    results = []
    env = environment(threads)  # once, before the first workload: its date and load are the run's start
    start = time.perf_counter()
    for wid, fn in workloads.WORKLOADS.items():
        if only and wid not in only:
            continue
        t0 = time.perf_counter()
        log(f"[benchmarks] workload {wid} ...")
        try:
            if wid in (5, 9):
                res = fn(cfg, orig, memory=memory, threads=threads)
            elif wid == 8:  # fresh processes, each at the run's thread count
                res = fn(cfg, orig, threads=threads)
            else:
                res = fn(cfg, orig)
        except Exception as e:  # a broken workload must not hide the others' numbers
            if smoke:
                raise
            res = {"id": wid, "title": fn.__name__, "timings": {}, "ratios": [], "info": {},
                   "error": f"{type(e).__name__}: {e}"}
        res["elapsed_s"] = time.perf_counter() - t0
        log(f"    ({res['elapsed_s']:.1f} s)")
        for row in res["ratios"]:
            v, ci = row["value"], _fmt_interval(row)
            log(f"    {row['name']}: {_fmt(v, unit=row.get('unit'))} ({ci})  target {row['target']}  met {row['met']}")
        results.append(res)
        if partial is not None:  # e.g. rewrite RESULTS.md after each workload, so a long run can be cut short
            partial({"env": env, "config": cfg, "original_available": orig is not None,
                     "workloads": results, "elapsed_s": time.perf_counter() - start})
    try:
        with open("/proc/loadavg") as f:
            env["load average at end"] = f.read().split()[:3]
    except OSError:
        pass
    return {"env": env, "config": cfg, "original_available": orig is not None,
            "workloads": results, "elapsed_s": time.perf_counter() - start}


def _fmt(v, digits=3, unit=None):
    return "n/a" if v is None else f"{v:.{digits}f}" + (f" {unit}" if unit else "")


def _fmt_interval(row: dict) -> str:
    ci = row.get("interval")  # memory rows have none
    return "-" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


def verdict(row: dict) -> str:
    """The ``met`` cell: yes / **no** / - (no target), with *within noise* when the target lies
    inside the ratio's interval."""
    if row["met"] is None:
        return "-"
    text = "yes" if row["met"] else "**no**"
    ci, target = row.get("interval"), float(row["target"].split()[-1])
    if ci is not None and ci[0] <= target <= ci[1]:
        text += " (*within noise*)"
    return text


def to_markdown(report: dict) -> str:
    """RESULTS.md: how to regenerate it, the machine, and the ratio table. Nothing else."""
    env, cfg = report["env"], report["config"]
    command = "python -m benchmarks.run" + (" --smoke" if cfg["smoke"] else "")
    lines = ["# Benchmark results", "",
             f"Generated by `{command}`; do not edit by hand. What bounds each ratio: "
             "[NOTES.md](NOTES.md).", "",
             "Ratios come from one process, contenders interleaved round by round in a rotating order, "
             "medians over the rounds. The interval is a 95% paired bootstrap over the rounds; a target "
             "inside it is marked *within noise*. A target marked *(guard)* is a limit the library is held "
             "to (NOTES.md); a value in s is seconds, not a ratio.", ""]
    if cfg["smoke"]:
        lines += ["**Smoke run: tiny shapes, no warm-up, one repeat. The values are meaningless; only the "
                  "structure is checked.**", ""]
    lines += ["## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in env.items() if k not in _RAW_ONLY_ENV]
    lines += ["", "## Ratios", "", "| # | ratio | value | 95% interval | target | met |", "|---|---|---|---|---|---|"]
    for res in report["workloads"]:
        for row in res["ratios"]:
            target = row["target"] or "report"
            if row.get("guard"):
                target += " (guard)"
            lines.append(f"| {res['id']} | {row['name']} | {_fmt(row['value'], unit=row.get('unit'))} | "
                         f"{_fmt_interval(row)} | {target} | {verdict(row)} |")
        if res.get("error"):
            lines.append(f"| {res['id']} | failed: {res['error'][:200]} | | | | |")
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat (CI)")
    ap.add_argument("--only", default="", help="comma-separated workload numbers, e.g. 1,3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=None, help="markdown path (default benchmarks/RESULTS.md; smoke: none)")
    ap.add_argument("--json", default=None,
                    help="raw results path (default benchmarks/out/results.json, git-ignored; smoke: none)")
    ap.add_argument("--quick", action="store_true",
                    help="full shapes, but no warm-up round for workload 6, 3 sequential originals, and no GPT-2 "
                         "compile in workload 7")
    ap.add_argument("--render", nargs="?", const=RAW_JSON, default=None, metavar="JSON",
                    help="only re-render the markdown from saved raw results (default: the last run's)")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        out = args.output or RESULTS_MD
        _write(out, to_markdown(report))
        print(f"[benchmarks] wrote {out}")
        return 0
    only = {int(s) for s in args.only.split(",") if s.strip()}
    out = args.output or (None if args.smoke else RESULTS_MD)
    raw = args.json or (None if args.smoke else RAW_JSON)

    def write(report):  # after every workload, so a long run can be cut short
        if out:
            _write(out, to_markdown(report))
        if raw:
            _write(raw, json.dumps(report, indent=1, default=str))

    overrides = dict(w6_warmup=0, orig_baselines=3, w7_gpt2_compile=False) if args.quick else None
    report = run(smoke=args.smoke, only=only or None, threads=args.threads, partial=write, overrides=overrides)
    write(report)
    for path in (out, raw):
        if path:
            print(f"[benchmarks] wrote {path}")
    print(f"[benchmarks] done in {report['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
