"""Settings whose combination would let one receipt run twice at once are refused, at load
(and so by `check`) and, for a handler's own deadline, when the handlers are loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.handler_api import HandlerPolicy, RoutedHandler
from consumer.handlers.plugins import deadline_problems
from consumer.settings import InvalidSettings, load_settings


def load(tmp_path: Path, text: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[alicom]\npreset = \"sandbox\"\n" + text, encoding="utf-8")
    load_settings(str(config), {})


def test_the_defaults_allow_no_double_run(tmp_path: Path) -> None:
    load(tmp_path, "")


def test_a_deadline_not_below_max_in_flight_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        load(tmp_path, "[worker]\nhandler_deadline_s = 20\n[ack]\nmax_in_flight_s = 8\n")
    [problem] = info.value.problems
    assert problem.startswith("worker.handler_deadline_s (20.0) must be below "
                              "ack.max_in_flight_s (8.0)")


def test_a_push_batch_that_can_outlast_reclaim_is_refused_naming_each_setting(
        tmp_path: Path) -> None:
    # 64 entries on 4 threads, 30 s each: the last may finish 480 s after the read.
    with pytest.raises(InvalidSettings) as info:
        load(tmp_path, "[worker]\nhandler_threads = 4\n[push]\nbatch_size = 64\n"
                       "reclaim_idle_s = 300\n")
    [problem] = info.value.problems
    for name in ("push.reclaim_idle_s (300.0)", "push.batch_size (64)",
                 "worker.handler_threads (4)", "worker.handler_deadline_s (30.0)", "480.0 s"):
        assert name in problem
    load(tmp_path, "[worker]\nhandler_threads = 4\n[push]\nbatch_size = 64\n"
                   "reclaim_idle_s = 481\n")


def test_a_handlers_own_deadline_past_max_in_flight_is_a_problem() -> None:
    class Slow:
        name = "slow"

        def handle(self, receipt: object) -> None: ...

    routes = {"SmsReport": [RoutedHandler(Slow(), "slow", HandlerPolicy(deadline_s=900)),
                            RoutedHandler(Slow(), "quick", HandlerPolicy(deadline_s=5))]}

    [problem] = deadline_problems(routes, 600.0)

    assert problem.startswith("handler 'slow': deadline_s (900) must be below "
                              "ack.max_in_flight_s (600.0)")
    assert deadline_problems(routes, 901.0) == []
