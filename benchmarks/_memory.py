"""Peak resident memory of one train step (GPT-2: workloads 5 and 9), measured in a fresh process per
contender.

Linux only: ``/proc/self/clear_refs`` (5) resets the high-water mark, ``VmHWM`` reads it. The
peak is taken during the second step (the first one allocates gradients and caches), so it is
the steady-state peak of a training step: model, activations, masks and gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def can_measure() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")


def measure_step(step) -> dict:
    """Run ``step`` twice; report the peak RSS during the second run and the RSS before it (MiB)."""
    import gc

    step()
    gc.collect()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    peak = _status_kb("VmHWM")
    return {"rss_before_mib": before / 1024, "peak_rss_mib": peak / 1024, "step_peak_above_before_mib": (peak - before) / 1024}


def measure_in_subprocess(contender: str, cfg: dict, threads: int, builder: str = "gpt2_train_step") -> dict:
    """Build ``contender``'s step in a fresh interpreter with ``workloads.<builder>(contender, cfg)``
    (default: the workload-5 model) and measure one step."""
    code = (
        "import json, sys, torch; torch.set_num_threads(%d);"
        "from benchmarks import workloads, _memory;"
        "cfg = json.loads(sys.argv[1]);"
        "step = getattr(workloads, sys.argv[3])(sys.argv[2], cfg);"
        "print('RESULT' + json.dumps(_memory.measure_step(step)))" % threads
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cfg), contender, builder], capture_output=True,
                          text=True, cwd=root, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT"):])
    raise RuntimeError(f"memory measurement of {contender!r} failed:\n{proc.stderr[-2000:]}")
