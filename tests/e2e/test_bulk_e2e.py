"""What a bulk sender gets from its receipts, end to end: the sandbox sends SMS with a failure
mix (its failure rate and the codes we choose), real workers run number-hygiene, send-tracker,
review-status and delivery-stats, and the real commands and the report page (in Chromium)
show what the sandbox did. Expectations are computed from what the sandbox answers through
QuerySendDetails (the official SDK), never from what the daemon wrote.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_dysmsapi20170525.models import (
    QuerySendDetailsRequest,
    SendBatchSmsRequest,
    SendSmsRequest,
)
from alibabacloud_tea_openapi.models import Config

from alicom_sandbox.config_file import toml_value
from alicom_sandbox.fakes import encode_body
from consumer.reports.tracking import SendTracker, TrackedSend
from tests.e2e.conftest import Stack
from tests.e2e.harness import REPO, worker_env
from tests.e2e.page_check import check_dashboard

pytestmark = pytest.mark.slow

# The failure mix: which codes the sandbox picks from, and the reason each stands for by the
# default rules (from the err_msg text, or the CMPP state).
FAILURE_CODES = [["MK:0005", "用户手机号码不存在"], ["MK:0001", "用户关机"],
                 ["DB:0141", "号码在黑名单中"], ["UNDELIV", "短信未送达"]]
REASON = {"MK:0005": "empty_number", "MK:0001": "powered_off", "DB:0141": "blacklisted",
          "UNDELIV": "undeliverable"}
# The policy under test: powered_off after 2 failures (no day span, so a test can see it);
# the defaults for the rest (empty_number, blacklisted at once; undeliverable needs 3 days).
POLICIES = {"powered_off": {"after": 2, "over_days": 0, "expire_days": 7}}
AFTER = {"empty_number": 1, "blacklisted": 1, "powered_off": 2, "undeliverable": 5}


@pytest.fixture
def bulk(stack: Stack) -> Iterator[Stack]:
    for kind in ("SignSmsReport", "TemplateSmsReport"):
        stack.sandbox.create_queue(stack.queue_name(kind), visibility_timeout_s=4)
    stack.sandbox.admin("POST", "/_sandbox/dysms/reset", {})
    stack.sandbox.admin("POST", "/_sandbox/dysms", {
        "account_id": stack.account_id, "failure_rate": 0.45, "failure_codes": FAILURE_CODES,
        "duplicate_rate": 0.1, "report_delay_min_s": 0.05, "report_delay_max_s": 0.4,
        "seed": 1414})
    yield stack
    stack.sandbox.admin("POST", "/_sandbox/dysms/reset", {})


def _config(stack: Stack, bundled: bool) -> Path:
    """The three handlers configured each on its own, or `bundled` as one `bulk-sender`."""
    path = stack.config(alicom={"queues": ["SmsReport", "SignSmsReport", "TemplateSmsReport"]})
    url = stack.redis_server.url
    handlers = [("bulk-sender", {"url": url, "number_hygiene": {"policies": POLICIES}})] \
        if bundled else [
        ("number-hygiene", {"url": url, "policies": POLICIES}),
        ("send-tracker", {"url": url}),
        ("review-status", {"url": url}),
    ]
    handlers.append(("delivery-stats", {"url": url}))
    text = path.read_text(encoding="utf-8")
    for use, options in handlers:
        text += '\n[[handlers]]\nuse = "%s"\noptions = %s\n' % (use, toml_value(options))
    path.write_text(text, encoding="utf-8")
    return path


def _client(stack: Stack) -> Client:
    return Client(Config(access_key_id=stack.sandbox.access_key_id,
                         access_key_secret=stack.sandbox.access_key_secret,
                         endpoint=stack.sandbox.endpoint.removeprefix("http://"),
                         protocol="http"))


def _settled(stack: Stack) -> int:
    return int(stack.sandbox.admin("GET", "/_sandbox/dysms")["counters"].get("settled", 0))


Sends = dict[str, list[tuple[str, str]]]  # task id -> its (BizId, number) pairs


def _send_round(stack: Stack, tracker: SendTracker, phones: list[str], round_no: int) -> Sends:
    """One SendBatchSms (a task of its own) and two SendSms grouped as one campaign task."""
    client, now = _client(stack), time.time()
    batch, rest = phones[:10], phones[10:]
    answer = client.send_batch_sms(SendBatchSmsRequest(
        phone_number_json=json.dumps(batch), sign_name_json=json.dumps(["沙箱"] * len(batch)),
        template_code="SMS_1")).body
    assert answer.code == "OK", answer.message
    tracker.record_many(TrackedSend(answer.biz_id, p, now) for p in batch)
    tasks: Sends = {answer.biz_id: [(answer.biz_id, p) for p in batch]}
    campaign = "campaign-%d" % round_no
    tasks[campaign] = []
    for part in (rest[: len(rest) // 2], rest[len(rest) // 2:]):
        answer = client.send_sms(SendSmsRequest(phone_numbers=",".join(part), sign_name="沙箱",
                                                template_code="SMS_2")).body
        assert answer.code == "OK", answer.message
        tracker.record_many(TrackedSend(answer.biz_id, p, now, task_id=campaign) for p in part)
        tasks[campaign] += [(answer.biz_id, p) for p in part]
    return tasks


def _outcome(stack: Stack, biz_id: str, phone: str) -> str:
    """The sandbox's ErrCode of one send ("DELIVERED" when delivered), by QuerySendDetails."""
    day = time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600))
    body = _client(stack).query_send_details(QuerySendDetailsRequest(
        phone_number=phone, biz_id=biz_id, send_date=day, page_size=10, current_page=1)).body
    [row] = body.sms_send_detail_dtos.sms_send_detail_dto
    assert row.send_status in (2, 3)
    return str(row.err_code) if row.send_status == 2 else "DELIVERED"


def _expected_suppressed(history: dict[str, list[str]]) -> set[str]:
    """The policy, applied by hand: a reason's failures count until another reason or a
    delivery; `AFTER[reason]` of them suppress."""
    out = set()
    for phone, sends in history.items():
        reason, count = None, 0
        for code in sends:
            if code == "DELIVERED":
                reason, count = None, 0
            elif REASON[code] == reason:
                count += 1
            else:
                reason, count = REASON[code], 1
        if reason is not None and count >= AFTER[reason]:
            out.add(phone)
    return out


def _cli(stack: Stack, config: Path, command: str, *argv: str,
         ) -> subprocess.CompletedProcess[str]:
    """`alicom-receipts <command> --config <config> <argv>`, the real process."""
    env = worker_env(stack.sandbox.access_key_id, stack.sandbox.access_key_secret)
    return subprocess.run([sys.executable, "-m", "consumer", command, "--config", str(config),
                           *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def _publish_reviews(stack: Stack) -> dict[tuple[str, str], tuple[str, str]]:
    """Review receipts in order (a state per item, then its next); the last state of each."""
    steps = [
        ("SignSmsReport", {"order_id": "2001", "sign_name": "沙箱店铺", "sign_status": "approving",
                           "reason": "", "sign_source": "企事业单位"}),
        ("TemplateSmsReport", {"order_id": "3001", "template_code": "SMS_1",
                               "template_name": "验证码", "template_status": "approving"}),
        ("SignSmsReport", {"order_id": "2001", "sign_name": "沙箱店铺", "sign_status": "rejected",
                           "reason": "资质材料不完整", "sign_source": "企事业单位"}),
        ("SignSmsReport", {"order_id": "2002", "sign_name": "沙箱二号", "sign_status": "approved",
                           "reason": ""}),
        ("TemplateSmsReport", {"order_id": "3001", "template_code": "SMS_1",
                               "template_name": "验证码", "template_status": "approved"}),
        ("TemplateSmsReport", {"order_id": "3002", "template_code": "SMS_2",
                               "template_name": "营销", "template_status": "rejected",
                               "reason": "变量内容不规范"}),
    ]
    publisher = stack.publisher()
    last = {}
    for kind, body in steps:
        publisher.send_bodies(stack.queue_name(kind), [encode_body(body)[0]])
        time.sleep(0.02)  # enqueue times in order, as the platform's would be
        state = body.get("sign_status") or body["template_status"]
        name = body.get("sign_name") or body["template_code"]
        last[("sign" if kind == "SignSmsReport" else "template", name)] = (state,
                                                                           body.get("reason", ""))
    publisher.close()
    return last


@pytest.mark.parametrize(("report_workers", "bundled"), [(1, False), (2, False), (2, True)],
                         ids=["one-worker", "two-workers", "two-workers-bulk-sender"])
def test_numbers_tasks_reviews_and_the_report_page(bulk: Stack, report_workers: int,
                                                   bundled: bool) -> None:
    stack = bulk
    config = _config(stack, bundled)
    for _ in range(report_workers):
        stack.worker(config, "SmsReport")
    stack.worker(config, "SignSmsReport")
    stack.worker(config, "TemplateSmsReport")
    tracker = SendTracker(stack.redis)
    base = random.randrange(10**7, 8 * 10**7)
    phones = ["139%08d" % (base + i) for i in range(30)]

    rounds = [_send_round(stack, tracker, phones, 1)]
    stack.wait(lambda: _settled(stack) == 30, "round 1 settled")
    stack.wait(lambda: tracker.count() == 0, "round 1's receipts applied")
    rounds.append(_send_round(stack, tracker, phones, 2))
    stack.wait(lambda: _settled(stack) == 60, "round 2 settled")
    stack.wait(lambda: tracker.count() == 0, "round 2's receipts applied")
    expected_reviews = _publish_reviews(stack)

    codes = {(biz, p): _outcome(stack, biz, p) for sends in rounds for pairs in sends.values()
             for biz, p in pairs}
    history = {p: [codes[(b, q)] for sends in rounds for pairs in sends.values()
                   for b, q in pairs if q == p] for p in phones}
    suppressed = _expected_suppressed(history)
    assert suppressed and set(phones) - suppressed, "the mix should give both kinds"
    check = _cli(stack, config, "numbers", "check", *phones)
    assert check.returncode == 1, check.stderr
    flagged = {line.split("\t")[0] for line in check.stdout.splitlines() if "suppressed" in line}
    assert flagged == suppressed, {p: history[p] for p in flagged ^ suppressed}

    tasks = {task: pairs for sends in rounds for task, pairs in sends.items()}
    for task_id, pairs in tasks.items():
        failed = sorted(p for b, p in pairs if codes[(b, p)] != "DELIVERED")
        shown = _cli(stack, config, "tasks", "show", task_id)
        assert ("submitted %d, delivered %d, failed %d, pending 0"
                % (len(pairs), len(pairs) - len(failed), len(failed))) in shown.stdout
        export = _cli(stack, config, "tasks", "export", task_id, "--status", "failed")
        rows = list(csv.DictReader(io.StringIO(export.stdout)))
        assert sorted(r["number"] for r in rows) == failed
        assert {r["number"]: r["err_code"] for r in rows} == {
            p: codes[(b, p)] for b, p in pairs if p in failed}

    stack.wait(lambda: len(_cli(stack, config, "reviews", "list").stdout.splitlines()) == 5,
               "four review items listed")
    listing = _cli(stack, config, "reviews", "list").stdout
    for (kind, name), (state, reason) in expected_reviews.items():
        [line] = [x for x in listing.splitlines() if " %s " % name in x]
        assert line.split()[0] == kind
        assert ({"approving": "in review"}.get(state, state) in line) and (reason in line)

    check_dashboard(stack, config, codes, suppressed, tasks, expected_reviews,
                    screenshot=os.environ.get("ALICOM_DASHBOARD_SCREENSHOT"))

    # a later delivery lifts one suppression (empty_number and blacklisted lift on delivery)
    lifted = sorted(suppressed)[0]
    stack.sandbox.admin("POST", "/_sandbox/dysms", {"failure_rate": 0.0})
    _client(stack).send_sms(SendSmsRequest(phone_numbers=lifted, sign_name="沙箱",
                                           template_code="SMS_1"))
    stack.wait(lambda: _cli(stack, config, "numbers", "check", lifted).returncode == 0,
               "the delivery lifted the suppression")
    again = _cli(stack, config, "numbers", "check", *sorted(suppressed))
    assert {line.split("\t")[0] for line in again.stdout.splitlines()
            if "suppressed" in line} == suppressed - {lifted}
