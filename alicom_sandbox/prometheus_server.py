"""A real Prometheus server on a free loopback port, scraping given targets, for tests and the
observability picture. Debian's `prometheus` binary must be on PATH (`make test` installs it
through .ci/ensure-prometheus)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alicom_sandbox.redis_server import free_port

JOB = "alicom-receipts"


@dataclass
class PrometheusServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def api(self, path: str, **params: str) -> Any:
        """The `data` of a /api/v1 answer; RuntimeError with Prometheus' error otherwise."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own http://127.0.0.1 server
                    self.url + "/api/v1/" + path + query, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError("prometheus %s: %s: %s" % (
                path, body.get("errorType"), body.get("error")))
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar answer becomes one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Any]:
        data = self.api("query_range", query=expr, start=str(start), end=str(end),
                        step=str(step_s))
        result: list[Any] = data["result"]
        return result


def _config(targets: Sequence[str], rule_files: Sequence[Path], interval_s: float) -> str:
    """prometheus.yml (YAML is a superset of JSON: no YAML library needed)."""
    return json.dumps({
        "global": {"scrape_interval": "%gs" % interval_s,
                   "evaluation_interval": "%gs" % interval_s},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    })


@contextmanager
def running_prometheus(targets: Sequence[str], rule_files: Sequence[Path] = (),
                       interval_s: float = 1.0) -> Iterator[PrometheusServer]:
    """Prometheus scraping `targets` ("host:port") as job "alicom-receipts" every
    `interval_s`, with `rule_files` loaded; stopped and its data removed afterwards."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not on PATH: `make test` installs it")
    workdir = Path(tempfile.mkdtemp(prefix="alicom-prometheus-"))
    (workdir / "prometheus.yml").write_text(_config(targets, rule_files, interval_s))
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - the prometheus binary, fixed arguments
        [binary, "--config.file", str(workdir / "prometheus.yml"),
         "--storage.tsdb.path", str(workdir / "data"),
         "--web.listen-address", "127.0.0.1:%d" % port, "--log.level", "warn"],
        stdout=log, stderr=subprocess.STDOUT)
    server = PrometheusServer(port, process, workdir)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(server: PrometheusServer, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if server.process.poll() is not None:
            raise RuntimeError("prometheus exited: %s" % (
                server.workdir / "prometheus.log").read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own http://127.0.0.1 server
                    server.url + "/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("prometheus did not become ready in %g s" % timeout_s)
        time.sleep(0.2)
