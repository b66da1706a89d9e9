"""Lost receipts recovered end to end: send through the sandbox with the official dysmsapi SDK,
track the sends, let the real worker apply the receipts that arrive, then run the real
`alicom-receipts reconcile` process and count every application (tests/e2e/recording.py).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_dysmsapi20170525.models import SendBatchSmsRequest, SendSmsRequest
from alibabacloud_tea_openapi.models import Config

from consumer.reports.tracking import SendTracker, TrackedSend
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, worker_env


@pytest.fixture
def sending(stack: Stack) -> Iterator[Stack]:
    """The stack with the sandbox's sending side reporting into this test's account."""
    stack.sandbox.admin("POST", "/_sandbox/dysms/reset", {})
    _dysms(stack, account_id=stack.account_id)
    yield stack
    stack.sandbox.admin("POST", "/_sandbox/dysms/reset", {})


def _dysms(stack: Stack, **changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = stack.sandbox.admin("POST", "/_sandbox/dysms", changes)
    return answer


def _counters(stack: Stack) -> dict[str, int]:
    counters: dict[str, int] = stack.sandbox.admin("GET", "/_sandbox/dysms")["counters"]
    return counters


def _client(stack: Stack) -> Client:
    return Client(Config(access_key_id=stack.sandbox.access_key_id,
                         access_key_secret=stack.sandbox.access_key_secret,
                         endpoint=stack.sandbox.endpoint.removeprefix("http://"),
                         protocol="http"))


def _configs(stack: Stack, **reconcile: Any) -> tuple[Path, Path]:
    """The worker's config (Recorder + send-tracker) and the same plus a [reconcile] table."""
    worker = stack.config()
    text = worker.read_text(encoding="utf-8") + (
        '\n[[handlers]]\nuse = "consumer.handlers.tracking:SendTracker"\n'
        'options = { url = "%s" }\n' % stack.redis_server.url)
    worker.write_text(text, encoding="utf-8")
    lines = ["%s = %s" % (k, json.dumps(v)) for k, v in reconcile.items()]
    other = stack.tmp / "reconcile.toml"
    other.write_text(text + "\n[reconcile]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return worker, other


def _reconcile(stack: Stack, config: Path) -> tuple[int, str]:
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "reconcile", "--config", str(config), "--grace", "0s"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, done.stdout + done.stderr


def _phones(count: int) -> list[str]:
    base = random.randrange(10**7, 8 * 10**7)
    return ["138%08d" % (base + i) for i in range(count)]


def _send_200(stack: Stack, tracker: SendTracker) -> set[str]:
    """40 SendSms of 3 numbers and 8 SendBatchSms of 10, each tracked; their dedup keys."""
    client, keys = _client(stack), set[str]()
    phones = iter(_phones(200))
    for i in range(48):
        numbers = [next(phones) for _ in range(3 if i < 40 else 10)]
        if i < 40:
            answer = client.send_sms(SendSmsRequest(
                phone_numbers=",".join(numbers), sign_name="沙箱", template_code="SMS_1",
                template_param='{"code":"%04d"}' % i, out_id="order-%d" % i)).body
        else:
            answer = client.send_batch_sms(SendBatchSmsRequest(
                phone_number_json=json.dumps(numbers), sign_name_json=json.dumps(["沙箱"] * 10),
                template_code="SMS_2", out_id="batch-%d" % i)).body
        assert answer.code == "OK", answer.message
        sent_at = time.time()
        tracker.record_many(TrackedSend(answer.biz_id, n, sent_at, "order-%d" % i)
                            for n in numbers)
        keys.update("SmsReport:%s:%s" % (answer.biz_id, n) for n in numbers)
    return keys


def test_reconcile_recovers_every_lost_receipt_once(sending: Stack) -> None:
    stack = sending
    _dysms(stack, loss_rate=0.1, duplicate_rate=0.05, failure_rate=0.1, seed=20240301,
           query_qps=50)
    tracker = SendTracker(stack.redis)
    worker_config, reconcile_config = _configs(stack, qps=40, batch_size=16)
    stack.worker(worker_config)
    keys = _send_200(stack, tracker)
    assert len(keys) == 200
    stack.wait(lambda: _counters(stack).get("settled") == 200, "every send settled")
    lost = _counters(stack)["lost"]
    assert 5 <= lost <= 40  # 10% of 200, from a fixed seed
    stack.wait(lambda: len(stack.applied()) == 200 - lost and tracker.count() == lost,
               "the delivered receipts applied and their sends cleared")

    code, output = _reconcile(stack, reconcile_config)
    assert code == 0, output
    assert "%d pending past the grace period; %d recovered" % (lost, lost) in output
    applied = stack.applied()
    assert set(applied) == keys
    assert set(applied.values()) == {1}
    by_source = {r["key"]: r["source"] for r in stack.records()}
    assert sorted(by_source.values()).count("reconcile") == lost
    assert tracker.count() == 0

    # The lost receipts turn up after all, late, through MNS: acknowledged, not applied again.
    assert stack.sandbox.admin("POST", "/_sandbox/dysms/deliver-lost", {}) == {"delivered": lost}
    stack.wait(stack.queue_is_empty, "the late receipts acknowledged")
    assert set(stack.applied().values()) == {1}

    code, output = _reconcile(stack, reconcile_config)
    assert code == 0, output
    assert "0 pending past the grace period" in output


def test_throttled_lookups_are_backed_off_and_still_recover(sending: Stack) -> None:
    stack = sending
    # One request every 2 s: the second lookup is refused at once, then retried after a pause.
    _dysms(stack, loss_rate=1.0, query_qps=0.5, throttle="gateway")
    tracker = SendTracker(stack.redis)
    _, reconcile_config = _configs(stack, qps=100, max_attempts=12, backoff_max_s=2)
    phones = _phones(2)
    biz_id = _client(stack).send_sms(SendSmsRequest(
        phone_numbers=",".join(phones), sign_name="s", template_code="SMS_1")).body.biz_id
    tracker.record_many(TrackedSend(biz_id, p, time.time()) for p in phones)
    stack.wait(lambda: _counters(stack).get("lost") == 2, "both receipts lost")

    code, output = _reconcile(stack, reconcile_config)
    assert code == 0, output
    assert "2 recovered" in output
    assert _counters(stack)["throttled"] >= 1
    assert '"event":"retrying"' in output
    assert set(stack.applied()) == {"SmsReport:%s:%s" % (biz_id, p) for p in phones}


def test_sends_older_than_the_query_window_are_dead_lettered(sending: Stack) -> None:
    stack = sending
    tracker = SendTracker(stack.redis)
    _, reconcile_config = _configs(stack)
    tracker.record("900000000000000001^0", "13800000001", time.time() - 31 * 86400,
                   out_id="order-old")
    waiting = _client(stack).send_sms(SendSmsRequest(
        phone_numbers="13800000002", sign_name="s", template_code="SMS_1")).body.biz_id
    _dysms(stack, report_delay_min_s=60, report_delay_max_s=60)  # for the next sends
    slow = _client(stack).send_sms(SendSmsRequest(
        phone_numbers="13800000003", sign_name="s", template_code="SMS_1")).body.biz_id
    tracker.record(slow, "13800000003")
    tracker.record(waiting, "13800000009")  # a number QuerySendDetails never heard of

    code, output = _reconcile(stack, reconcile_config)
    assert code == 0, output
    assert ("3 pending past the grace period; 0 recovered, 0 already applied, 1 still waiting, "
            "1 not found, 0 in progress, 1 beyond the 30-day window") in output
    [letter] = stack.dead_letters().list(10, 0)
    assert (letter.reason, letter.source, letter.message_type) == (
        "beyond_query_window", "reconcile", "SmsReport")
    assert json.loads(letter.raw_body)["out_id"] == "order-old"
    assert sorted(s.phone_number for s in tracker.pending()) == ["13800000003", "13800000009"]
    assert stack.applied() == {}
