"""What one worker configuration costs over another, from runs made side by side.

The worker's CPU per receipt moves by a third between runs on a shared machine (the same
build read 145-226 µs), far more than a handler set adds. Each run of `worker_bench.py` runs
every configuration once, one after the other, so the machine's state is nearly the same for
the two: the difference within a run is the figure, and its median over the runs the
estimate. Its interval is distribution-free (the order statistics that bracket a median
with 95% confidence, by the binomial's normal approximation): it says how far that median
can be from the true one, so "under 30 µs" is only claimed when the whole interval is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

#: The fewest runs for which an interval is given (below, the bracket would be the extremes).
MIN_RUNS = 6
#: Issue 14's goal for the bulk sender's three handlers: the worker CPU per receipt they add.
HANDLERS_GOAL_US = 30.0


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
    """`median` of the per-run differences (cost - base), `low`..`high` its 95% interval
    (None under MIN_RUNS runs), and the differences themselves, in run order."""

    differences: tuple[float, ...]
    median: float
    low: float | None
    high: float | None

    def words(self) -> str:
        """"23.0 µs (95% interval 16.2-29.8, per run -1.4 to 41.0, 55 runs)": one decimal,
        so that an interval ending just under a goal does not read as ending on it."""
        interval = ("95%% interval %.1f-%.1f, " % (self.low, self.high)
                    if self.low is not None and self.high is not None else "")
        return "%.1f µs (%sper run %.1f to %.1f, %d runs)" % (
            self.median, interval, min(self.differences), max(self.differences),
            len(self.differences))


def median_interval(values: Sequence[float], confidence: float = 0.95,
                    ) -> tuple[float, float] | None:
    """The order statistics that hold the median of `values`' population with `confidence`
    (None under MIN_RUNS values): ranks k and n+1-k, k = (n - z sqrt(n)) / 2 rounded down."""
    n = len(values)
    if n < MIN_RUNS:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    k = max(1, math.floor((n - z * math.sqrt(n)) / 2))
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def paired_cost(base: Mapping[int, float], cost: Mapping[int, float]) -> PairedCost | None:
    """`cost` minus `base` in each run both have (keyed by run index); None when none."""
    runs = sorted(set(base) & set(cost))
    if not runs:
        return None
    differences = tuple(cost[r] - base[r] for r in runs)
    interval = median_interval(differences)
    return PairedCost(differences, statistics.median(differences),
                      *(interval if interval is not None else (None, None)))


def handler_costs(samples: Sequence[RunSample], latencies: Sequence[int]) -> list[str]:
    """Per handler set (bulk, bulk-sender; per Redis and build label) and latency: the
    worker CPU per receipt it adds to the plain worker of the same label, from the per-run
    differences (`bench.paired`), against HANDLERS_GOAL_US: met when the whole interval is
    under it, missed when the whole interval is over it."""
    out: list[str] = []
    for mode in sorted({s.mode for s in samples if s.mode.startswith("worker+")}):
        handlers, at, label = mode.removeprefix("worker+").partition("@")
        base = "worker" + at + label
        for lat in latencies:
            cost = paired_cost(*({s.run: s.worker_us for s in samples
                                  if s.mode == m and s.latency_ms == lat} for m in (base, mode)))
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
