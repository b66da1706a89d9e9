import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from alicom_sandbox.redis_server import RedisServer, running_redis
from tests.e2e.harness import wait_until


def test_the_test_redis_is_a_real_server_that_can_go_away_and_come_back(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"
    assert "redis_version" in redis_client.info("server")
    redis_server.stop()
    try:
        redis_client.ping()
        raise AssertionError("ping succeeded while the server was stopped")
    except redis.ConnectionError:
        pass
    redis_server.start_again()
    assert redis_client.ping()


def test_a_restart_on_a_port_taken_meanwhile_fails_instead_of_using_the_other_server(
    tmp_path: Path,
) -> None:
    with running_redis() as server:
        server.stop()
        squatter = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(server.port),
             "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with redis.Redis(port=server.port) as other:
                wait_until(lambda: _answers(other), 10, "the other server")
            with pytest.raises(RuntimeError, match="the port is taken"):
                server.start_again()
            assert server.process.poll() is not None
        finally:
            squatter.kill()
            squatter.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
