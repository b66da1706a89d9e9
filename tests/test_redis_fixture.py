import redis

from alicom_sandbox.redis_server import RedisServer


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
