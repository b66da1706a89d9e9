"""Delivery statistics on a real Redis: the handler's counters, `alicom-receipts stats` and the
Prometheus collector, checked against figures worked out by hand in the comments below."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from alicom_sandbox.redis_server import RedisServer, free_port
from consumer import cli
from consumer.errors import RetryLater
from consumer.handlers.delivery_stats import DeliveryStatsHandler
from consumer.handlers.plugins import PluginError, close_handlers, load_handlers
from consumer.pipeline.decode import parse_object
from consumer.receipts import Receipt, ReceiptMeta, SmsReport
from consumer.reports.delivery_stats import (
    DEFAULT_PREFIX,
    StatsWriter,
    hour_key,
    observe,
    record_submitted,
)
from consumer.reports.err_codes import describe
from consumer.runtime.instruments import delivery_facts
from consumer.settings import HandlerSpec

SHANGHAI = ZoneInfo("Asia/Shanghai")
# The sample's hours are fixed dates in the past; a bucket expires `ttl` after its hour, so
# they would be gone at once with the default 90 days.
KEEP_S = 100 * 365 * 86400.0
META = ReceiptMeta("mns", queue="Alicom-Queue-1-SmsReport", message_id="m")
_serial = iter(range(10**6))


def report(send: str, delay_s: int | None, code: str = "DELIVERED", msg: str = "") -> Receipt:
    """A domestic SmsReport sent at `send` (Shanghai) and reported `delay_s` later."""
    n = next(_serial)
    sent = datetime.strptime(send, "%Y-%m-%d %H:%M:%S")
    body = {
        "phone_number": "138%08d" % n, "biz_id": "%d^0" % (900000 + n),
        "success": code == "DELIVERED", "err_code": code, "err_msg": msg, "sms_size": "1",
        "send_time": send, "out_id": "",
        "report_time": "" if delay_s is None else
        (sent + timedelta(seconds=delay_s)).strftime("%Y-%m-%d %H:%M:%S"),
    }
    return parse_object("SmsReport", body, META)


def intl(send: str, delay_s: int | None, status: str, code: str) -> Receipt:
    """An international (PascalCase) report with RFC 2822 dates at +0800."""
    n = next(_serial)
    sent = datetime.strptime(send, "%Y-%m-%d %H:%M:%S")
    fmt = "%a, %d %b %Y %H:%M:%S +0800"
    body = {"To": "852%08d" % n, "MessageId": str(700000 + n), "Status": status,
            "ErrorCode": code, "ErrorDescription": code, "SmsSize": "1",
            "SendDate": sent.strftime(fmt),
            "ReceiveDate": "" if delay_s is None else
            (sent + timedelta(seconds=delay_s)).strftime(fmt)}
    return parse_object("SmsReport", body, META)


def hour_09() -> list[Receipt]:
    # 9 delivered, 3 failed. Delays 3 4 4 6 8 9 12 25 71 | 5 40 15: sum 202 s, n 12,
    # avg 16.83 s. Buckets <=5 s: 3 4 4 5 (4); <=10: 6 8 9 (3); <=20: 12 15 (2); <=30: 25;
    # <=60: 40; <=120: 71. Median = 6th of 12 -> in "<=10 s".
    t = "2024-03-10 09:%02d:00"
    out = [report(t % i, d) for i, d in enumerate((3, 4, 4, 6, 8, 9, 12, 25, 71))]
    out += [report(t % 20, 5, "MK:0001", "用户关机"), report(t % 21, 40, "MK:0001", "用户关机"),
            report(t % 59, 15, "UNDELIV", "短信未送达")]
    return out


def hour_10() -> list[Receipt]:
    # domestic: 6 delivered (2 2 3 7 10 11 s), failed MK:0001 (1 s), IC:0015 (30 s),
    # UNDELIV (4000 s: past the last bound, "inf"), DB:0141 (no report time: no delay);
    # intl: delivered (33 s), failed UNDELIV (20 s), Status 6 ("other", no receive date).
    # -> delivered 7, failed 5, other 1; rate 7/12 = 58.3%.
    # Delays n 11, sum 35 + 1 + 30 + 4000 + 33 + 20 = 4119 s, avg 374.45 s.
    # Buckets <=1: 1; <=2: 2; <=5: 1; <=10: 2; <=20: 2 (11, 20); <=30: 1; <=60: 1; inf: 1.
    # Median = 6th of 11: cumulative 1, 3, 4, 6 -> "<=10 s".
    t = "2024-03-10 10:%02d:30"
    out = [report(t % i, d) for i, d in enumerate((2, 2, 3, 7, 10, 11))]
    out += [report(t % 10, 1, "MK:0001", "用户关机"), report(t % 11, 30, "IC:0015", "停机"),
            report(t % 12, 4000, "UNDELIV"), report(t % 13, None, "DB:0141", "号码在黑名单中"),
            intl(t % 14, 33, "1", "success"), intl(t % 15, 20, "2", "UNDELIV"),
            intl(t % 16, None, "6", "")]
    return out


def outside_window() -> list[Receipt]:
    """Sent just before and just after the window 09:00-12:00: in no figure below."""
    return [report("2024-03-10 08:59:59", 3, "MK:0001"), report("2024-03-10 12:00:00", 3)]


@pytest.fixture
def writer(redis_client: redis.Redis) -> StatsWriter:
    return StatsWriter(redis_client, ttl_s=KEEP_S)


@pytest.fixture
def handler(redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[Any]:
    built = DeliveryStatsHandler(url=redis_server.url, ttl_days=KEEP_S / 86400)
    yield built
    built.close()


@pytest.fixture
def sample(handler: DeliveryStatsHandler, redis_client: redis.Redis) -> None:
    """The sample above, in three batches, one of them delivered twice; 15 sends tracked
    at 09:xx (so 15 - 12 = 3 without a receipt), none at 10:xx."""
    first = hour_09()
    for batch in (first, hour_10(), outside_window(), first):
        assert handler.handle_batch(batch).failed == []
    naive_shanghai = datetime(2024, 3, 10, 9, 5)
    record_submitted(redis_client, naive_shanghai, 10, ttl_s=KEEP_S)
    utc = datetime(2024, 3, 10, 1, 40, tzinfo=timezone.utc)  # 09:40 in Shanghai
    record_submitted(redis_client, utc, 5, ttl_s=KEEP_S)


# -- the command's figures -----------------------------------------------------------------

WINDOW = ["--redis-url", "<url>", "--since", "3h", "--until", "2024-03-10 11",
          "--tz", "Asia/Shanghai"]


def run(argv: list[str]) -> int:
    """`alicom-receipts stats ARGV` through the command router and runner, as a user runs it."""
    return cli.main(["stats", *argv])


def run_stats(server: RedisServer, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    argv = [server.url if a == "<url>" else a for a in WINDOW] + list(extra)
    assert run(argv) == 0
    return capsys.readouterr().out


@pytest.mark.usefixtures("sample")
def test_stats_text_matches_hand_computed_figures(redis_server: RedisServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = run_stats(redis_server, capsys)
    lines = out.splitlines()
    assert lines[0] == ("Delivery statistics, 3 h from 2024-03-10 09:00 to 2024-03-10 12:00 "
                        "(Asia/Shanghai), by send hour")
    # delivered 9 + 7, failed 3 + 5, other 1; rate 16 / 24
    assert "  receipts       25 (delivered 16, failed 8, other 1)" in lines
    assert "  success rate   66.7%" in lines
    assert "  submitted      15, 3 without a receipt yet" in lines
    # delays n 23, sum 202 + 4119 = 4321 s, avg 187.87 s; merged buckets cumulative
    # 1, 3, 8, 13 (<=10 s holds the 12th = median), 17, 19, 21 (<=60 s holds the 21st = p90)
    assert "  receipt delay  avg 187.9 s, median <= 10 s, p90 <= 1 min" in lines
    codes = lines.index("Top failure codes (of 8 failed)")
    rows = [line.split(None, 3) for line in lines[codes + 2:codes + 6]]
    # MK:0001 2 + 1, UNDELIV 1 + 1 + 1 (intl), DB:0141 1, IC:0015 1; ties by code
    assert [r[:3] for r in rows] == [["MK:0001", "3", "37.5%"], ["UNDELIV", "3", "37.5%"],
                                     ["DB:0141", "1", "12.5%"], ["IC:0015", "1", "12.5%"]]
    assert rows[1][3].startswith("undeliverable")
    assert rows[2][3] == ("carrier-specific code DB: meaning not published; "
                          "platform says: 号码在黑名单中")
    hourly = lines.index("Hourly (Asia/Shanghai; hours without data left out)")
    assert [line.split() for line in lines[hourly + 2:]] == [
        ["2024-03-10", "09:00", "15", "9", "3", "0", "75.0%", "16.8", "s", "<=", "10", "s"],
        ["2024-03-10", "10:00", "-", "7", "5", "1", "58.3%", "374.5", "s", "<=", "10", "s"],
    ]


@pytest.mark.usefixtures("sample")
def test_stats_json_matches_hand_computed_figures(redis_server: RedisServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(run_stats(redis_server, capsys, "--json", "--top", "2"))
    assert doc["window"] == {"from": "2024-03-10T09:00:00+08:00",
                             "to": "2024-03-10T12:00:00+08:00", "hours": 3,
                             "tz": "Asia/Shanghai"}
    t = doc["totals"]
    assert (t["delivered"], t["failed"], t["other"], t["submitted"]) == (16, 8, 1, 15)
    assert t["without_receipt"] == 3
    assert t["success_rate"] == pytest.approx(16 / 24)
    assert (t["delay_count"], t["delay_median_le_s"], t["delay_p90_le_s"]) == (23, 10, 60)
    assert t["delay_avg_s"] == pytest.approx(4321 / 23)
    assert [(f["code"], f["count"], f["known"]) for f in doc["failures"]] == [
        ("MK:0001", 3, False), ("UNDELIV", 3, True)]
    assert doc["failures"][0]["platform_msg"] == "用户关机"
    h09, h10 = doc["hours"]
    assert (h09["hour"], h09["submitted"], h09["without_receipt"]) == (
        "2024-03-10T09:00:00+08:00", 15, 3)
    assert h09["delay_avg_s"] == pytest.approx(202 / 12)
    assert (h10["without_receipt"], h10["delay_count"], h10["delay_p90_le_s"]) == (None, 11, 60)
    # the 10th and 11th of 11 delays: 33 s (<=60) and 4000 s; p99 would be "inf"


@pytest.mark.usefixtures("sample")
def test_stats_shows_other_zones_and_only_the_window(redis_server: RedisServer,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--redis-url", redis_server.url, "--since", "1h", "--until", "2024-03-10 00",
            "--tz", "UTC", "--json"]
    assert run(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    # 00:00 UTC is 08:00 in Shanghai: only the one report sent at 08:59:59
    assert doc["window"]["from"] == "2024-03-10T00:00:00+00:00"
    assert (doc["totals"]["failed"], doc["totals"]["delivered"]) == (1, 0)


def test_stats_reads_redis_and_prefix_from_the_configured_handler(
        tmp_path: Any, redis_server: RedisServer, redis_client: redis.Redis,
        capsys: pytest.CaptureFixture[str]) -> None:
    custom = DeliveryStatsHandler(url=redis_server.url, prefix="elsewhere", ttl_days=36500)
    custom.handle_batch([report("2024-03-10 09:00:00", 3)])
    custom.close()
    config = tmp_path / "w.toml"
    config.write_text(
        '[alicom]\npreset = "sandbox"\n[redis]\nurl = "redis://127.0.0.1:1/0"\n'
        '[[handlers]]\nuse = "delivery-stats"\n'
        'options = { url = "%s", prefix = "elsewhere" }\n' % redis_server.url)
    argv = ["--config", str(config), "--since", "1h", "--until", "2024-03-10 09", "--json"]
    assert run(argv) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["delivered"] == 1


@pytest.mark.parametrize("argv", [["--since", "soon"], ["--since", "0h"], ["--tz", "Mars/Base"],
                                  ["--until", "yesterday"]])
def test_stats_refuses_bad_arguments(redis_server: RedisServer, argv: list[str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--redis-url", redis_server.url, *argv]) == 2
    assert "alicom-receipts stats:" in capsys.readouterr().err


def test_stats_says_when_redis_does_not_answer(capsys: pytest.CaptureFixture[str]) -> None:
    url = "redis://:hunter2@127.0.0.1:%d/0" % free_port()
    assert run(["--redis-url", url]) == 3
    err = capsys.readouterr().err
    assert "Redis did not answer" in err
    assert "hunter2" not in err


# -- counting ---------------------------------------------------------------------------------

def test_a_redelivered_receipt_is_counted_once(writer: StatsWriter,
                                               redis_client: redis.Redis) -> None:
    batch = [report("2024-03-10 09:00:00", 3), report("2024-03-10 09:00:01", 4, "MK:0001")]
    writer.record(batch)
    writer.record(batch[1:])  # another handler failed: the receipt comes again
    key = hour_key(DEFAULT_PREFIX, datetime(2024, 3, 10, 9, tzinfo=SHANGHAI))
    assert redis_client.hgetall(key) == {
        b"delivered": b"1", b"failed": b"1", b"fail:MK:0001": b"1", b"delay_count": b"2",
        b"delay_sum_ms": b"7000", b"delay_le_ms:5000": b"2"}


def test_without_markers_a_redelivery_counts_again(redis_client: redis.Redis) -> None:
    writer = StatsWriter(redis_client, ttl_s=KEEP_S, once_ttl_s=0)
    batch = [report("2024-03-10 09:00:00", 3)]
    writer.record(batch)
    writer.record(batch)
    key = hour_key(DEFAULT_PREFIX, datetime(2024, 3, 10, 1, tzinfo=timezone.utc))
    assert redis_client.hget(key, "delivered") == b"2"
    assert redis_client.keys(DEFAULT_PREFIX + ":once:*") == []


def test_buckets_expire_a_ttl_after_their_hour(redis_client: redis.Redis) -> None:
    year_s = 365 * 86400.0  # far enough for a recent hour, too short for 2020's
    writer = StatsWriter(redis_client, ttl_s=year_s)
    hour = datetime.now(SHANGHAI).replace(minute=0, second=0, microsecond=0)
    send = (hour + timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:%S")
    writer.record([report(send, 3), report("2020-01-01 00:00:00", 3)])
    key = hour_key(DEFAULT_PREFIX, hour)
    # kept `ttl` after the end of its hour
    assert redis_client.expiretime(key) == int(hour.timestamp() + 3600 + year_s)
    old = hour_key(DEFAULT_PREFIX, datetime(2020, 1, 1, 0, tzinfo=SHANGHAI))
    assert not redis_client.exists(old)  # past its retention already


def test_unreadable_times_count_in_the_hour_they_were_handled() -> None:
    now = datetime(2024, 5, 1, 7, 42, tzinfo=timezone.utc).timestamp()
    body = {"phone_number": "13800000000", "biz_id": "1^0", "success": True,
            "send_time": "someday", "report_time": ""}
    obs = observe(parse_object("SmsReport", body, META), now)
    assert obs is not None
    assert (obs.hour, obs.delay_ms) == (datetime(2024, 5, 1, 7, tzinfo=timezone.utc), None)


@pytest.mark.parametrize(("send", "reported", "delay_ms"), [
    ("2024-03-10 09:00:10", "2024-03-10 09:00:00", 0),       # clocks disagree: no negative
    ("2024-03-01 09:00:00", "2024-03-10 09:00:00", None),    # 9 days: a bad date, not a delay
    ("20240310090000", "2024-03-10 09:00:02", 2000),         # the old compact form
])
def test_delay_edges(send: str, reported: str, delay_ms: int | None) -> None:
    body = {"phone_number": "13800000000", "biz_id": "1^0", "success": True,
            "send_time": send, "report_time": reported}
    obs = observe(parse_object("SmsReport", body, META), 0.0)
    assert obs is not None
    assert obs.delay_ms == delay_ms


def test_record_submitted_in_a_callers_pipeline(redis_client: redis.Redis) -> None:
    pipe = redis_client.pipeline()
    record_submitted(pipe, datetime(2024, 3, 10, 9, 59, tzinfo=SHANGHAI), 7, ttl_s=KEEP_S)
    key = hour_key(DEFAULT_PREFIX, datetime(2024, 3, 10, 1, tzinfo=timezone.utc))
    assert not redis_client.exists(key)  # queued only
    pipe.execute()
    record_submitted(redis_client, datetime(2024, 3, 10, 1, tzinfo=timezone.utc).timestamp(),
                     ttl_s=KEEP_S)
    assert redis_client.hget(key, "submitted") == b"8"


# -- the handler as a plugin ---------------------------------------------------------------

def test_handler_loads_from_config_and_ignores_other_types(redis_server: RedisServer,
                                                           redis_client: redis.Redis) -> None:
    spec = HandlerSpec("consumer.handlers.delivery_stats:DeliveryStatsHandler",
                       options={"url": redis_server.url, "prefix": "p"})
    routes = load_handlers([spec])
    assert list(routes) == ["SmsReport", "IntlSmsReport"]
    (built,) = [h.target for h in routes["SmsReport"]]
    up = parse_object("SmsUp", {"phone_number": "1", "content": "TD", "send_time":
                                "2024-03-10 09:00:00", "dest_code": "1", "sequence_id": 1}, META)
    assert built.handle_batch([up]).failed == []  # type: ignore[union-attr]
    assert redis_client.keys("p:*") == []
    close_handlers(routes)


def test_handler_refuses_a_bad_url_without_quoting_it() -> None:
    spec = HandlerSpec("consumer.handlers.delivery_stats:DeliveryStatsHandler",
                       options={"url": "http://:hunter2@host/"})
    with pytest.raises(PluginError) as caught:
        load_handlers([spec])
    assert "hunter2" not in str(caught.value)


def test_handler_asks_for_a_retry_when_redis_is_down() -> None:
    down = DeliveryStatsHandler(url="redis://127.0.0.1:%d/0" % free_port(), timeout_s=1)
    with pytest.raises(RetryLater):
        down.handle_batch([report("2024-03-10 09:00:00", 3)])
    down.close()


def test_err_codes() -> None:
    assert describe("DELIVRD").known
    assert describe("isv.mobile_number_illegal").meaning == "invalid phone number format"
    assert describe("MK:0001").meaning == "carrier-specific code MK: meaning not published"
    assert not describe("MK:0001").known
    assert describe("ZZ-42").meaning == "unknown code"
    assert not describe("").known


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
       st.integers(min_value=-3600, max_value=4 * 24 * 3600), st.booleans())
def test_the_fast_delivery_path_gives_observes_figures(sent: datetime, delay_s: int,
                                                       success: bool) -> None:
    sent = sent.replace(microsecond=0)
    receipt = SmsReport(raw={}, meta=ReceiptMeta("mns"), phone_number="1", biz_id="b",
                        success=success, err_code="E", send_time=str(sent),
                        report_time=str(sent + timedelta(seconds=delay_s)))
    obs = observe(receipt, 0.0)
    assert obs is not None
    expected = None if obs.delay_ms is None else obs.delay_ms / 1000
    assert delivery_facts(receipt, 0.0) == (str(success).lower(), "E", expected)
