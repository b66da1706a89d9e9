"""The worker bench's handler-cost verdict (bench/paired.py): per-run differences, their
median and its distribution-free interval, and the goal met only when the interval is under it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench.paired import handler_costs, median_interval, paired_cost


@dataclass(frozen=True)
class Run:
    mode: str
    latency_ms: int
    run: int
    worker_us: float


def _runs(mode: str, values: list[float], latency_ms: int = 0) -> list[Run]:
    return [Run(mode, latency_ms, i, v) for i, v in enumerate(values)]


def test_the_interval_is_the_sign_tests_exact_binomial_ranks() -> None:
    def ranks(n: int) -> tuple[float, float] | None:
        return median_interval([float(v) for v in reversed(range(1, n + 1))])

    # P(k <= B <= n - k) >= 95% for B ~ Binomial(n, 1/2), k as large as that allows.
    assert ranks(55) == (20.0, 36.0)
    assert ranks(54) == (20.0, 35.0)   # the normal approximation would give 19 and 36
    assert ranks(120) == (49.0, 72.0)
    assert ranks(11) == (2.0, 10.0)
    assert ranks(6) == (1.0, 6.0)      # 1 - 2 / 2**6 = 96.9%
    assert ranks(5) is None            # 1 - 2 / 2**5 = 93.8%: not even the extremes


def test_the_cost_pairs_the_runs_made_side_by_side() -> None:
    cost = paired_cost({0: 100.0, 1: 200.0, 2: 150.0}, {0: 110.0, 1: 230.0, 3: 999.0})
    assert cost is not None
    assert cost.differences == (10.0, 30.0)  # run 2 has no cost sample, run 3 no base one
    assert cost.median == 20.0 and cost.low is None
    assert cost.words() == "20.0 µs (per run 10.0 to 30.0, 2 runs)"
    assert paired_cost({0: 1.0}, {1: 2.0}) is None


@pytest.mark.parametrize(("added", "verdict"), [
    (list(range(10, 21)), "meets"),            # the whole interval under 30
    (list(range(20, 41)), "not shown (the interval holds 30)"),
    (list(range(31, 42)), "MISSES"),
    ([25] * 5 + [30] * 6, "not shown (the interval holds 30)"),  # ends on the goal
    ([30] * 11, "MISSES"),                                         # starts on it
])
def test_the_goal_is_met_only_when_the_whole_interval_is_under_it(added: list[int],
                                                                     verdict: str) -> None:
    # The plain worker's CPU moves a lot between runs; the set adds `added` in each run.
    base = [150.0 + 40 * (i % 3) for i in range(len(added))]
    samples = (_runs("worker", base)
               + _runs("worker+bulk-sender", [b + a for b, a in zip(base, added, strict=True)]))
    [line] = handler_costs(samples, [0])
    assert line.startswith("0 ms: bulk-sender adds ")
    assert line.endswith("(goal: under 30 µs): " + verdict)


def test_each_build_and_redis_is_compared_with_its_own_plain_worker() -> None:
    samples = (_runs("worker@old", [100.0] * 6) + _runs("worker+bulk@old", [150.0] * 6)
               + _runs("worker@new", [300.0] * 6) + _runs("worker+bulk@new", [310.0] * 6)
               + _runs("worker@cluster", [100.0] * 6, latency_ms=20)
               + _runs("worker+bulk-sender@cluster", [120.0] * 6, latency_ms=20))
    lines = handler_costs(samples, [0, 20])  # by handler set, then latency
    tail = " of worker CPU per receipt to the plain worker (goal: under 30 µs): "
    assert lines == [
        "20 ms: bulk-sender@cluster adds 20.0 µs (95% interval 20.0-20.0, per run 20.0 to "
        "20.0, 6 runs)" + tail + "meets",
        "0 ms: bulk@new adds 10.0 µs (95% interval 10.0-10.0, per run 10.0 to 10.0, 6 runs)"
        + tail + "meets",
        "0 ms: bulk@old adds 50.0 µs (95% interval 50.0-50.0, per run 50.0 to 50.0, 6 runs)"
        + tail + "MISSES",
    ]


def test_too_few_runs_give_no_verdict() -> None:
    samples = _runs("worker", [100.0] * 3) + _runs("worker+bulk", [110.0] * 3)
    [line] = handler_costs(samples, [0])
    assert line.endswith("not shown (fewer runs than an interval needs)")


def test_an_interval_ending_just_under_the_goal_is_printed_as_the_verdict_reads_it() -> None:
    # Rounded outward to 0.1 µs: 29.96 prints (and counts) as 30.0, never "-30.0 ... meets".
    samples = _runs("worker", [100.0] * 11) + _runs("worker+bulk", [125.0] * 6 + [129.96] * 5)
    [line] = handler_costs(samples, [0])
    assert "95% interval 25.0-30.0" in line
    assert line.endswith("not shown (the interval holds 30)")


def test_a_cluster_build_pair_is_compared_with_the_plain_worker_of_both_labels() -> None:
    samples = (_runs("worker@old", [500.0] * 6) + _runs("worker@cluster@old", [100.0] * 6)
               + _runs("worker+bulk@cluster@old", [105.0] * 6))
    [line] = handler_costs(samples, [0])
    assert line.startswith("0 ms: bulk@cluster@old adds 5.0 µs")


def test_a_run_with_two_samples_of_one_mode_is_refused() -> None:
    samples = _runs("worker", [100.0] * 6) + _runs("worker+bulk", [110.0] * 6)
    samples.append(Run("worker+bulk", 0, 3, 500.0))  # e.g. a handler set given twice
    with pytest.raises(ValueError, match="runs \\[3\\] have more than one sample"):
        handler_costs(samples, [0])
