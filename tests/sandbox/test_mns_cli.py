"""The sandbox command line and process: banner, flags, signals, and the catch-all guard."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from mns.mns_exception import MNSServerException
from mns.queue import Message

from alicom_sandbox.context import SandboxConfig
from alicom_sandbox.server import build_app, build_context
from alicom_sandbox.testing import running_sandbox


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "alicom_sandbox.server", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )


def read_until(process: subprocess.Popen[bytes], last_line: str) -> str:
    assert process.stdout is not None
    fd = process.stdout.fileno()
    output = b""
    deadline = time.monotonic() + 20
    while last_line.encode() not in output:
        assert time.monotonic() < deadline, output
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, output
            output += chunk
    return output.decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_banner_names_endpoint_key_and_queues_and_a_signal_ends_it_cleanly(
    signum: signal.Signals,
) -> None:
    process = start_cli(
        "--queue", "first-queue", "--queue", "second-queue",
        env={"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIcustomKey",
             "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "custom-secret-value"},
    )
    try:
        banner = read_until(process, "queue: second-queue")
        process.send_signal(signum)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert "endpoint: http://127.0.0.1:" in banner
    assert "access_key_id: LTAIcustomKey" in banner
    assert "queue: first-queue" in banner
    assert "custom-secret-value" not in banner


def test_the_documented_local_default_key_is_used_and_shown_without_environment() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_ACCESS_KEY")}
    process = subprocess.Popen(
        [sys.executable, "-m", "alicom_sandbox.server", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        banner = read_until(process, "MnsCardVender")
    finally:
        process.terminate()
        process.communicate(timeout=20)
    assert "access_key_id: LTAIsandboxAccessKey" in banner
    assert "sandbox-secret-not-for-production" in banner
    assert "queue: Alicom-Queue-1943695596114318-SmsReport" in banner


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--error-rate", "2"], {}),
     ([], {"ALIBABA_CLOUD_ACCESS_KEY_ID": "only-the-id", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ""}),
     (["--queue", "9-not-a-queue-name"], {})],
    ids=["rate-above-one", "id-without-secret", "bad-queue-name"],
)
def test_bad_start_settings_end_with_an_error_and_no_server(
    args: list[str], env: dict[str, str]
) -> None:
    process = start_cli(*args, env=env)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode not in (0, None)
    assert stderr.strip()


def test_fault_flags_are_active_from_the_start() -> None:
    with running_sandbox(
        queues=["flags"], error_rate=1.0, latency_ms=5, clock_skew_s=30, token_lifetime_s=120,
        seed=7,
    ) as sandbox:
        state = sandbox.state()
        with pytest.raises(MNSServerException) as caught:
            sandbox.account().get_queue("flags").send_message(Message("x"))
    assert state["queues"] == ["flags"]
    assert state["faults"]["error_rate"] == 1.0
    assert state["faults"]["latency_ms"] == 5.0
    assert state["clock_skew_s"] == 30.0
    assert state["token_lifetime_s"] == 120.0
    assert caught.value.type in ("InternalError", "ServiceUnavailable")


def test_an_unexpected_exception_becomes_internal_error_xml() -> None:
    async def scenario() -> tuple[int, str, str]:
        app = build_app(build_context(SandboxConfig(default_queues=())))

        async def broken(request: web.Request) -> web.Response:
            raise RuntimeError("a bug")

        app.router.add_get("/queues-broken", broken)
        async with TestClient(TestServer(app)) as client:
            answer = await client.get("/queues-broken")
            return answer.status, await answer.text(), answer.headers["x-mns-request-id"]

    status, body, request_id = asyncio.run(scenario())
    assert status == 500
    assert "<Code>InternalError</Code>" in body
    assert f"<RequestId>{request_id}</RequestId>" in body
    assert "Traceback" not in body and "a bug" not in body
