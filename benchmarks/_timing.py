"""Interleaved timing: every contender runs once per round, in a rotating order, and each
contender's median over the rounds is reported, so drift and noise from a shared machine hit
all contenders alike and ratios stay meaningful."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def interleaved(contenders: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time each callable ``repeats`` times, interleaved; returns {name: {"median_s", "times_s"}}."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(ts), "times_s": ts} for name, ts in times.items()}


def ratio(timings: dict[str, dict], num: str, den: str) -> float | None:
    if num not in timings or den not in timings:
        return None
    return timings[num]["median_s"] / timings[den]["median_s"]
