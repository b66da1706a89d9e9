"""What one worker configuration costs over another, from runs made side by side.

The worker's CPU per receipt moves by a third between runs on a shared machine (the same
build read 145-226 µs), far more than a handler set adds. Each run of `worker_bench.py` runs
every configuration once, one after the other, so the machine's state is nearly the same for
them: the difference within a run is the figure, and its median over the runs the estimate.
Its interval is distribution-free: the order statistics that bracket the median of the
differences with at least 95% confidence (the sign test's exact binomial ranks). It says how
far that median can be from the true one, so "under 30 µs" is only claimed when the whole
interval is. It holds for the machine's load during the runs (a busier machine makes every
round trip and thread switch dearer): the bench prints the load average.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

#: Issue 14's goal for the bulk sender's three handlers: the worker CPU per receipt they add.
HANDLERS_GOAL_US = 30.0
#: The confidence of the interval.
CONFIDENCE = 0.95
#: Steps per µs the interval is rounded outward to (0.1 µs, as printed).
_STEPS_PER_US = 10


class RunSample(Protocol):
    """What `handler_costs` reads of a worker run (`worker_bench.Sample`)."""

    @property
    def mode(self) -> str: ...  # "worker", "worker+bulk-sender", "worker+bulk@old"...
    @property
    def latency_ms(self) -> int: ...
    @property
    def run(self) -> int: ...
    @property
    def worker_us(self) -> float: ...


@dataclass(frozen=True)
class PairedCost:
    """`median` of the per-run differences (cost - base), `low`..`high` its interval rounded
    outward to 0.1 µs, as printed, so that the printed interval and a verdict read from
    it agree (None when too few runs give one), and the differences, in run order."""

    differences: tuple[float, ...]
    median: float
    low: float | None
    high: float | None

    def words(self) -> str:
        """"23.0 µs (95% interval 16.2-29.8, per run -1.4 to 41.0, 55 runs)"."""
        interval = ("95%% interval %.1f-%.1f, " % (self.low, self.high)
                    if self.low is not None and self.high is not None else "")
        return "%.1f µs (%sper run %.1f to %.1f, %d runs)" % (
            self.median, interval, min(self.differences), max(self.differences),
            len(self.differences))


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                    ) -> tuple[float, float] | None:
    """The k-th smallest and k-th largest of `values`, for the largest k whose pair holds the
    median of their population with at least `confidence`: P(k <= B <= n - k) for B ~
    Binomial(n, 1/2), exact. None when even the smallest and the largest do not (n = 5 or
    fewer at 95%)."""
    n = len(values)
    below = 0.0  # P(B <= k - 1), accumulated as k grows
    k = 0
    while k < n // 2:
        below += math.comb(n, k) / 2 ** n
        if 1 - 2 * below < confidence:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def paired_cost(base: Mapping[int, float], cost: Mapping[int, float]) -> PairedCost | None:
    """`cost` minus `base` in each run both have (keyed by run index); None when none."""
    runs = sorted(set(base) & set(cost))
    if not runs:
        return None
    differences = tuple(cost[r] - base[r] for r in runs)
    interval = median_interval(differences)
    if interval is None:
        return PairedCost(differences, statistics.median(differences), None, None)
    low, high = interval
    return PairedCost(differences, statistics.median(differences),
                      math.floor(round(low * _STEPS_PER_US, 6)) / _STEPS_PER_US,
                      math.ceil(round(high * _STEPS_PER_US, 6)) / _STEPS_PER_US)


def handler_costs(samples: Sequence[RunSample], latencies: Sequence[int]) -> list[str]:
    """Per handler set (bulk, bulk-sender; per Redis and build label) and latency: the
    worker CPU per receipt it adds to the plain worker of the same label, from the per-run
    differences, against HANDLERS_GOAL_US: met when the whole interval (as printed) is under
    it, missed when the whole interval is at or over it."""
    out: list[str] = []
    for mode in sorted({s.mode for s in samples if s.mode.startswith("worker+")}):
        handlers, at, label = mode.removeprefix("worker+").partition("@")
        base = "worker" + at + label
        for lat in latencies:
            cost = paired_cost(_by_run(samples, base, lat), _by_run(samples, mode, lat))
            if cost is None:
                continue
            if cost.low is None or cost.high is None:
                verdict = "not shown (fewer runs than an interval needs)"
            elif cost.high < HANDLERS_GOAL_US:
                verdict = "meets"
            elif cost.low >= HANDLERS_GOAL_US:
                verdict = "MISSES"
            else:
                verdict = "not shown (the interval holds %.0f)" % HANDLERS_GOAL_US
            out.append("%d ms: %s%s adds %s of worker CPU per receipt to the plain worker "
                       "(goal: under %.0f µs): %s" % (lat, handlers, at + label, cost.words(),
                                                      HANDLERS_GOAL_US, verdict))
    return out


def _by_run(samples: Sequence[RunSample], mode: str, latency_ms: int) -> dict[int, float]:
    """Run index -> worker CPU per receipt of `mode` at `latency_ms`; ValueError for a run
    with two samples (the runs were not numbered, or a handler set was given twice)."""
    chosen = [s for s in samples if s.mode == mode and s.latency_ms == latency_ms]
    twice = [run for run, n in Counter(s.run for s in chosen).items() if n > 1]
    if twice:
        raise ValueError("%s at %d ms: runs %s have more than one sample"
                         % (mode, latency_ms, twice))
    return {s.run: s.worker_us for s in chosen}
