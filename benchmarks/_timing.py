"""Interleaved timing: every contender runs once per round, in a rotating order, and each
contender's median over the rounds is reported, so drift and noise from a shared machine hit
all contenders alike and ratios stay meaningful. :func:`ratio_interval` says how far a ratio of
medians could move from noise alone: a paired bootstrap over the rounds."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


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


def ratio_interval(timings: dict[str, dict], num: str, den: str, *, level: float = 0.95, resamples: int = 4000,
                   seed: int = 0) -> tuple[float, float] | None:
    """A ``level`` percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13) for
    ``ratio(timings, num, den)``, or None when either contender is missing or ran once.

    Rounds are resampled *paired* when both contenders ran the same rounds (same count, from one
    :func:`interleaved` call): a round's slow spell then slows both, as it did when timed, and
    the interval reflects the noise of the ratio rather than of each median. Otherwise each
    contender's times are resampled on their own. Seeded: the same timings give the same interval.
    """
    if ratio(timings, num, den) is None:
        return None
    a = torch.tensor(timings[num]["times_s"], dtype=torch.float64)
    b = torch.tensor(timings[den]["times_s"], dtype=torch.float64)
    if len(a) < 2 or len(b) < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    ia = torch.randint(len(a), (resamples, len(a)), generator=g)
    ib = ia if len(a) == len(b) else torch.randint(len(b), (resamples, len(b)), generator=g)
    # quantile(0.5) averages the two middle values, as statistics.median does for the point estimate
    r = a[ia].quantile(0.5, dim=1) / b[ib].quantile(0.5, dim=1)
    lo, hi = torch.quantile(r, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return lo, hi
