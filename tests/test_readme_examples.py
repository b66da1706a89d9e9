"""The README's examples work as written: the push body and curl command against a real push
server, and the Dysmsapi SDK snippet against the sandbox."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

from alicom_sandbox.redis_server import RedisServer
from alicom_sandbox.testing import running_sandbox
from consumer.sources.push.server import SUCCESS, running_push_server
from tests.test_push import CiPushSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(r"```%s\n(.*?)```" % language, README, flags=re.S)


def test_the_readme_push_example_is_stored_and_answered_as_the_platform_wants(
        redis_server: RedisServer) -> None:
    [command] = [b for b in blocks("sh") if "curl" in b and "/alicom/SmsReport" in b]
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    url = next(w for w in words if w.startswith("http://"))
    body = words[words.index("-d") + 1].encode()
    assert json.loads(body)[0]["err_code"] == "DELIVERED"
    with running_push_server(CiPushSettings(listen="127.0.0.1:0"), redis_server.url) as running:
        request = urllib.request.Request(running.url + url.partition("/alicom")[2], data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
            assert json.loads(answer.read()) == dict(SUCCESS)
    assert '"msg": "%s"' % SUCCESS["msg"] in command  # the answer the README shows


def test_the_readme_dysmsapi_snippet_sends_to_the_sandbox() -> None:
    [snippet] = [b for b in blocks("python") if "send_sms" in b]
    with running_sandbox() as sandbox:
        code = snippet.replace("127.0.0.1:8765", sandbox.endpoint.removeprefix("http://"))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"OK \d+\^0\n", done.stdout), done.stdout
