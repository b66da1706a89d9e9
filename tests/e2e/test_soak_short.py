"""The soak's short version (bench/soak.py; `make soak` runs the long one): a few thousand
receipts with platform duplicates, malformed bodies and poison, 4 workers, kill -9 every few
seconds, MNS 5xx and resets, short-lived tokens, one Redis restart (AOF), the push server and
push worker under load, a handler that fsyncs each application."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakPlan, markdown, run


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_short_soak_loses_nothing_and_applies_nothing_twice_outside_the_crash_window(
        tmp_path: Path) -> None:
    plan = SoakPlan(receipts=3000, first_chunk=1000, publish_rate_per_s=300, malformed=10,
                    poison=10, push_receipts=300, push_rate_per_s=60, kill_every_s=(3.0, 5.0),
                    redis_restart_every_s=12, token_lifetime_s=10, timeout_s=240)
    report = run(plan, tmp_path)
    summary = markdown(report)
    assert report["kills"] >= 3, summary
    assert report["redis_restarts"] >= 1, summary
    assert report["published_receipts"] > 2500 and report["pushed_receipts"] == 300, summary
    assert report["lost"] == 0, summary
    assert report["applied_twice_outside_crash_window"] == 0, summary
    assert report["poison_applied"] == 0, summary
    assert report["dead_letters_other"] == 0, summary
    assert report["poison_without_dead_letter"] == 0, summary
    assert report["dead_letters_malformed"] >= report["malformed_published"], summary
    assert all(rss for rss in report["rss_kb"].values()), summary
