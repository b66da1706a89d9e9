"""`alicom-receipts demo`: the whole loop on this machine, no cloud account needed.

It starts a Redis server and the sandbox (MNS, the token API and Dysmsapi) on free loopback
ports and one worker process for SmsReport with the built-in `log` handler printing every
receipt. Then it sends SMS through the official Dysmsapi SDK (`SendSms`, two numbers per
request); the sandbox writes each number's SmsReport receipt into the queue after a short
delay, some as failed deliveries and some twice (platform duplicates, new MessageId), and
one malformed body is published beside them. At the end it prints what happened: each
receipt applied once, duplicates caught, the bad body in the dead-letter store.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_dysmsapi20170525.models import SendSmsRequest

from alicom_sandbox.config_file import write_config
from alicom_sandbox.publisher import Publisher
from alicom_sandbox.redis_server import running_redis
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from consumer.cli.runner import CommandParser, positive, share
from consumer.clients.credentials import AccessKey
from consumer.clients.redis_client import connect
from consumer.clients.tea import tea_config
from consumer.pipeline.deadletter_store import DeadLetterSettings, RedisDeadLetterStore
from consumer.runtime.supervisor import worker_command


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = CommandParser(prog="alicom-receipts demo", description=__doc__)
    p.add_argument("--seconds", type=positive, default=15.0, help="how long to publish")
    p.add_argument("--rate", type=positive, default=4.0, help="receipts per second")
    p.add_argument("--duplicate-rate", type=share, default=0.1,
                   help="share of receipts the platform sends twice (default 0.1)")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="alicom-demo-") as tmp, running_redis() as rds, \
            running_sandbox() as sandbox:
        config = write_config(Path(tmp) / "demo.toml", {
            "alicom": {"preset": "custom", "mns_endpoint": sandbox.endpoint,
                       "token_endpoint": sandbox.endpoint.removeprefix("http://"),
                       "token_protocol": "http", "account_id": sandbox.account_id,
                       "queues": ["SmsReport"]},
            "redis": {"url": rds.url},
            "poll": {"pollers": 2, "wait_seconds": 2, "socket_timeout_s": 10},
            "worker": {"shutdown_budget_s": 10},
            "log": {"format": "console"},
        }, [{"use": "log"}])
        env = dict(os.environ, ALIBABA_CLOUD_ACCESS_KEY_ID=sandbox.access_key_id,
                   ALIBABA_CLOUD_ACCESS_KEY_SECRET=sandbox.access_key_secret)
        print("demo: sandbox on %s, redis on %s, worker starting" % (sandbox.endpoint, rds.url))
        worker = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            worker_command("SmsReport", str(config)), env=env)
        try:
            published = _send(sandbox, args)
            time.sleep(3.0)  # let the worker finish the last batch before stopping it
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(30)
        dead = RedisDeadLetterStore(connect(rds.url, socket_timeout_s=10), DeadLetterSettings())
        print("\ndemo: sent %d SMS and published %d malformed body; the sandbox sent %d "
              "receipt(s) twice, as the platform may. The worker's last line counts them: "
              "`duplicates` for a copy acknowledged because its receipt was already applied, "
              "`in_progress_skipped` for a copy that arrived while the first was being "
              "handled (left in the queue; it comes back after the visibility timeout and is "
              "then acknowledged as a duplicate). Worker exited %d; %d dead letter(s) kept "
              "with their raw body." % (published[0], published[2], published[1], code,
                                        dead.count()))
    return 0


def _send(sandbox: SandboxHandle, args: argparse.Namespace) -> tuple[int, int, int]:
    """SendSms at `args.rate` numbers a second; (numbers sent, duplicates, malformed)."""
    sandbox.admin("POST", "/_sandbox/dysms", {"duplicate_rate": args.duplicate_rate,
                                              "failure_rate": 0.15})
    key = AccessKey(sandbox.access_key_id, sandbox.access_key_secret, source="sandbox")
    client = Client(tea_config(key, sandbox.endpoint.removeprefix("http://"), "http",
                               "cn-hangzhou", connect_timeout_s=5, read_timeout_s=10))
    requests = max(1, int(args.seconds * args.rate / 2))
    for i in range(requests):
        numbers = "1390000%04d,1380000%04d" % (i, i)
        answer = client.send_sms(SendSmsRequest(
            phone_numbers=numbers, sign_name="demo", template_code="SMS_DEMO",
            template_param='{"code":"%04d"}' % i, out_id="order-%d" % i)).body
        print("demo: SendSms %s -> %s BizId %s" % (numbers, answer.code, answer.biz_id))
        time.sleep(2 / args.rate)
    with Publisher(sandbox.endpoint, sandbox.access_key_id, sandbox.access_key_secret) as pub:
        pub.publish("SmsReport", 1, malformed=1)
    time.sleep(1.5)  # the sandbox writes receipts up to a second after the send
    counters = sandbox.admin("GET", "/_sandbox/dysms")["counters"]
    return requests * 2, int(counters.get("duplicates", 0)), 1
