"""Settings: the TOML file, environment overrides, and one clear message per problem."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.settings import (
    DEFAULT_CONFIG_TOML,
    PRESETS,
    InvalidSettings,
    Settings,
    load_settings,
    preset_endpoints,
    redact_url,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "alicom-receipts.example.toml"
ACCOUNT = "1092397003988387"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "alicom-receipts.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems_of(text: str, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(InvalidSettings) as info:
        load_settings(write(tmp_path, text), env or {})
    return info.value.problems


MINIMAL = f'[alicom]\naccount_id = "{ACCOUNT}"\n'


# -- loading --------------------------------------------------------------------------------


def test_the_embedded_default_points_at_a_local_sandbox_and_a_local_redis() -> None:
    s = load_settings(None, {})
    assert s.endpoints == PRESETS["sandbox"]
    assert s.endpoints.mns_endpoint == "http://127.0.0.1:8765"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.queue_name("SmsReport") == "Alicom-Queue-1943695596114318-SmsReport"
    assert [h.use for h in s.handlers] == ["log"]
    assert s.source == "<embedded default>"
    assert "preset = \"sandbox\"" in DEFAULT_CONFIG_TOML


def test_a_file_sets_values_and_everything_else_keeps_its_default(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL + """
queues = ["SmsUp"]
[poll]
pollers = 2
wait_seconds = 20
socket_timeout_s = 30
[dedup]
completed_ttl_s = 3600
[token]
refresh_before_s = 60
"""), {})
    assert s.queues == ("SmsUp",)
    assert (s.poll.pollers, s.poll.wait_seconds, s.poll.socket_timeout_s) == (2, 20, 30.0)
    assert s.poll.batch_size == 16
    assert s.dedup.completed_ttl_s == 3600.0
    assert s.dedup.key_prefix == "alicom:dedup:"
    assert s.token.refresh_before_s == 60.0
    assert s.endpoints == PRESETS["mainland"]
    assert s.queue_name("SmsUp") == f"Alicom-Queue-{ACCOUNT}-SmsUp"


def test_environment_overrides_win_over_the_file_and_are_typed_by_the_field(tmp_path: Path) -> None:
    env = {
        "ALICOM_RECEIPTS_REDIS_URL": "redis://10.0.0.5:6380/2",
        "ALICOM_RECEIPTS_POLL_POLLERS": "8",
        "ALICOM_RECEIPTS_ACK_RETRY_BASE_S": "2.5",
        "ALICOM_RECEIPTS_ALICOM_QUEUES": "SmsReport, GlobeSmsReport",
        "ALICOM_RECEIPTS_WORKER_MAX_RECEIPTS": "1000",
        "ALICOM_RECEIPTS_METRICS_ADDRESS": ":9464",
        "ALICOM_RECEIPTS_CONFIG": "/etc/alicom-receipts.toml",  # the CLI's, not a setting
        "HOME": "/root",
    }
    s = load_settings(write(tmp_path, MINIMAL + "[poll]\npollers = 2\n"), env)
    assert s.redis_url == "redis://10.0.0.5:6380/2"
    assert s.poll.pollers == 8
    assert s.ack.retry_base_s == 2.5
    assert s.queues == ("SmsReport", "GlobeSmsReport")
    assert s.worker.max_receipts == 1000
    assert s.metrics.address == ":9464"


def test_an_empty_environment_value_clears_an_optional_setting(tmp_path: Path) -> None:
    text = MINIMAL + "[worker]\nmax_rss_mb = 512\n"
    assert load_settings(write(tmp_path, text), {}).worker.max_rss_mb == 512
    cleared = load_settings(write(tmp_path, text), {"ALICOM_RECEIPTS_WORKER_MAX_RSS_MB": ""})
    assert cleared.worker.max_rss_mb is None


def test_the_example_config_is_complete_and_loads_once_the_account_id_is_set() -> None:
    with pytest.raises(InvalidSettings, match=r"alicom\.account_id must be the digits"):
        load_settings(str(EXAMPLE), {})
    s = load_settings(str(EXAMPLE), {"ALICOM_RECEIPTS_ALICOM_ACCOUNT_ID": ACCOUNT})
    assert s.endpoints == PRESETS["mainland"]
    assert [(h.use, h.types) for h in s.handlers] == [
        ("log", None), ("jsonl", None), ("mypkg.handlers:on_report", ("SmsReport",))]
    assert s.handlers[1].options == {"path": "/var/lib/alicom-receipts/receipts.jsonl"}
    assert s.handlers[2].name == "reports-to-crm"
    # Every setting the dataclasses know is present in the example (uncommented or not).
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, value in s.describe().items():
        if isinstance(value, dict) and section != "endpoints":
            for key in value:
                assert f"{key} =" in text, f"{section}.{key} is missing from the example"


def test_presets_cover_mainland_international_vpc_and_sandbox() -> None:
    intl = preset_endpoints("international")
    assert intl.token_endpoint == "dybaseapi.ap-southeast-1.aliyuncs.com"
    vpc = preset_endpoints("vpc-cn-shanghai")
    assert vpc.mns_endpoint == "http://1943695596114318.mns.cn-shanghai-internal-vpc.aliyuncs.com"
    assert vpc.token_endpoint == "dybaseapi-vpc.cn-shanghai.aliyuncs.com"
    with pytest.raises(ConfigError, match="did you mean 'mainland'"):
        preset_endpoints("mainlnd")


def test_a_custom_endpoint_takes_the_account_id_from_its_host(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, """
[alicom]
preset = "custom"
mns_endpoint = "http://1234567890123456.mns.test.local:8765"
token_endpoint = "tokens.test.local:8765"
token_protocol = "http"
"""), {})
    assert s.queue_prefix == "Alicom-Queue-1234567890123456-"
    assert s.endpoints.token_protocol == "http"


def test_one_preset_field_can_be_overridden(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[alicom]\npreset = "sandbox"\n'
                                      'mns_endpoint = "http://127.0.0.1:9999"\n'), {})
    assert s.endpoints.mns_endpoint == "http://127.0.0.1:9999"
    assert s.endpoints.token_endpoint == "127.0.0.1:8765"


# -- validation: one message per problem, naming the setting ---------------------------------


@pytest.mark.parametrize(("toml", "message"), [
    ("[poll]\nwait_seconds = 45\nsocket_timeout_s = 60",
     "poll.wait_seconds must be 1-30 (0 would spin on empty receives), got 45"),
    ("[poll]\nbatch_size = 17", "poll.batch_size must be 1-16, got 17"),
    ("[poll]\npollers = 0", "poll.pollers must be 1-64, got 0"),
    ("[ack]\nvisibility_timeout_s = 50000", "ack.visibility_timeout_s must be 1-43200, got 50000"),
    ("[ack]\ndelete_batch_max = 20", "ack.delete_batch_max must be 1-16, got 20"),
    ("[ack]\nretry_base_s = 0", "ack.retry_base_s must be > 0 and <= 43200, got 0.0"),
    ("[worker]\nhandler_threads = 0", "worker.handler_threads must be 1-1024, got 0"),
    ("[worker]\nmax_rss_mb = 8", "worker.max_rss_mb must be 32-1048576, got 8"),
    ("[token]\nmax_attempts = 0", "token.max_attempts must be 1-20, got 0"),
    ("[log]\nlevel = \"verbose\"", "log.level must be one of debug, info, warning, error, "
                                   "critical, got 'verbose'"),
    ("[log]\nformat = \"jsn\"", "log.format must be one of auto, json, console, ecs, got 'jsn' "
                                "(did you mean 'json'?)"),
    ("[redis]\nurl = \"http://localhost\"",
     "redis.url must start with redis://, rediss://, unix://, redis+sentinel://, "
     "rediss+sentinel://, redis+cluster://, rediss+cluster://, got 'http://localhost'"),
    ("[metrics]\naddress = \"9464\"",
     "metrics.address must be host:port (or :port, port 1-65535), got '9464'"),
    ("[poll]\nsocket_timeout_s = 12", "poll.socket_timeout_s must be at least "
                                       "poll.wait_seconds + 5 (15), got 12.0"),
    ("[ack]\nextend_before_s = 60", "ack.extend_before_s (60.0) must be below "
                                    "ack.visibility_timeout_s (60)"),
    ("[dedup]\nlease_s = 60", "dedup.lease_s"),  # gone: a claim lasts until NextVisibleTime
    ("[worker]\nin_flight_max = 8", "worker.in_flight_max (8) must be >= poll.batch_size (16)"),
    ("[dedup]\ncompleted_ttl_s = 0", "dedup.completed_ttl_s must be 1-31536000, got 0.0"),
    ("[poll]\npollers = \"four\"", "poll.pollers must be an integer, got 'four'"),
    ("[poll]\npollers = 2.5", "poll.pollers must be an integer, got '2.5'"),
    ("[ack]\nretry_base_s = true", "ack.retry_base_s must be a number, got 'True'"),
])
def test_each_invalid_value_gets_one_message_naming_the_setting(
        tmp_path: Path, toml: str, message: str) -> None:
    problems = problems_of(MINIMAL + toml + "\n", tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(message), problems


@pytest.mark.parametrize(("toml", "message"), [
    ("[alicom]\npreset = \"sandbox\"\nqueues = [\"SmsReprot\"]",
     "alicom.queues: 'SmsReprot' is not an MNS message type"),
    ("[alicom]\npreset = \"sandbox\"\nqueues = []",
     "alicom.queues must list at least one message type"),
    ("[alicom]\npreset = \"sandbox\"\nqueues = [\"SmsUp\", \"SmsUp\"]",
     "alicom.queues lists a message type twice"),
    ("[alicom]\npreset = \"mainland\"", "alicom.account_id is required with preset 'mainland'"),
    ("[alicom]\npreset = \"moon\"\naccount_id = \"1\"", "alicom.preset must be one of"),
    ("[alicom]\npreset = \"custom\"\naccount_id = \"1\"",
     "alicom.preset custom needs alicom.mns_endpoint and alicom.token_endpoint"),
    ("[alicom]\naccount_id = \"1\"\ntoken_endpoint = \"https://dybaseapi.aliyuncs.com\"",
     "alicom.token_endpoint must be host[:port] without a scheme"),
    ("[alicom]\naccount_id = \"1\"\ntoken_protocol = \"ftp\"",
     "alicom.token_protocol must be http or https, got 'ftp'"),
    ("[alicom]\naccount_id = \"1\"\nmns_endpoint = \"1943695596114318.mns.aliyuncs.com\"",
     "alicom.mns_endpoint must be http(s)://host[:port]"),
])
def test_each_alicom_problem_gets_its_own_message(tmp_path: Path, toml: str, message: str) -> None:
    problems = problems_of(toml + "\n", tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(message), problems


def test_unknown_keys_and_sections_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL + "[poll]\npolers = 3\n[wroker]\nx = 1\n", tmp_path)
    assert "poll.polers is not a setting (did you mean 'pollers'?)" in problems
    assert "[wroker] is not a section (did you mean 'worker'?)" in problems


def test_an_unknown_environment_override_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL, tmp_path, {"ALICOM_RECEIPTS_POLL_POLERS": "3"})
    assert problems == ("ALICOM_RECEIPTS_POLL_POLERS is not a setting "
                        "(did you mean 'ALICOM_RECEIPTS_POLL_POLLERS'?)",)


def test_a_badly_typed_environment_override_names_the_setting(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL, tmp_path, {"ALICOM_RECEIPTS_POLL_POLLERS": "many"})
    assert problems == ("ALICOM_RECEIPTS_POLL_POLLERS: poll.pollers must be an integer, "
                        "got 'many'",)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(write(tmp_path, MINIMAL + "[poll]\nbatch_size = 0\n[log]\nlevel = \"x\"\n"),
                      {"ALICOM_RECEIPTS_NOPE_X": "1"})
    assert len(info.value.problems) == 3
    assert str(info.value).startswith("3 problems in the configuration:")
    assert isinstance(info.value, ConfigError)


def test_invalid_toml_and_a_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(write(tmp_path, "[poll\n"), {})
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_settings(str(tmp_path / "absent.toml"), {})


def test_handler_tables_are_checked(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL + """
[[handlers]]
types = ["SmsReport"]
[[handlers]]
use = "log"
typs = ["SmsUp"]
[[handlers]]
use = "jsonl"
options = "path"
""", tmp_path)
    assert problems == (
        "handlers[0].use must name a handler (an entry point name or module:attr)",
        "handlers[1].typs is not a setting (did you mean 'types'?)",
        "handlers[2].options must be a table",
    )


# -- the AccessKey never lives in the configuration ------------------------------------------


@pytest.mark.parametrize("toml", [
    '[alicom]\naccount_id = "1"\naccess_key_secret = "s3cr3t-value"\n',
    '[alicom]\naccount_id = "1"\n[credentials]\nAccessKeySecret = "s3cr3t-value"\n',
    '[alicom]\naccount_id = "1"\n[[handlers]]\nuse = "webhook"\n'
    'options = { access_key_secret = "s3cr3t-value" }\n',
])
def test_an_access_key_secret_in_the_file_is_refused_with_where_to_put_it(
        tmp_path: Path, toml: str) -> None:
    with pytest.raises(InvalidSettings) as info:
        load_settings(write(tmp_path, toml), {})
    text = str(info.value)
    assert "is not allowed: the AccessKey never goes in the configuration" in text
    assert "$CREDENTIALS_DIRECTORY" in text
    assert "ALIBABA_CLOUD_ACCESS_KEY_SECRET" in text
    assert "s3cr3t-value" not in text


def test_an_access_key_in_an_environment_override_is_refused(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL, tmp_path,
                           {"ALICOM_RECEIPTS_ALICOM_ACCESS_KEY_SECRET": "s3cr3t-value"})
    assert len(problems) == 1
    assert problems[0].startswith("ALICOM_RECEIPTS_ALICOM_ACCESS_KEY_SECRET is not allowed")
    assert "s3cr3t-value" not in problems[0]


# -- no password in anything printable -------------------------------------------------------


def test_a_redis_password_is_kept_but_never_printed(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL + """
[redis]
url = "redis://:hunter2-pw@redis.internal:6379/0"
[[handlers]]
use = "redis-stream"
options = { url = "redis://app:hunter2-pw@redis.internal:6379/1", stream = "s" }
[[handlers]]
use = "webhook"
options = { url = "https://hooks.internal/x", headers = { Authorization = "Bearer hunter2-pw" } }
[[handlers]]
use = "postgres"
options = { dsn = "host=db user=app password=hunter2-pw dbname=receipts" }
[[handlers]]
use = "webhook"
options = { url = "https://hooks.internal/x?team=a&access_token=hunter2-pw" }
"""), {})
    assert s.redis_url == "redis://:hunter2-pw@redis.internal:6379/0"
    described = s.describe()
    assert described["redis_url"] == "redis://:***@redis.internal:6379/0"
    assert described["handlers"][0]["options"]["url"] == "redis://app:***@redis.internal:6379/1"
    assert described["handlers"][1]["options"]["headers"] == "***"
    assert described["handlers"][2]["options"]["dsn"] == (
        "host=db user=app password=*** dbname=receipts")
    assert described["handlers"][3]["options"]["url"] == (
        "https://hooks.internal/x?team=a&access_token=***")
    for printable in (repr(s), str(s), repr(described)):
        assert "hunter2-pw" not in printable


def test_a_bad_redis_url_is_reported_without_its_password(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL + '[redis]\nurl = "redi://:hunter2-pw@h:6379"\n', tmp_path)
    assert problems == ("redis.url must start with redis://, rediss://, unix://, "
                        "redis+sentinel://, rediss+sentinel://, redis+cluster://, "
                        "rediss+cluster://, got 'redi://h:6379'",)


def test_redact_url_masks_user_info_and_query_passwords() -> None:
    assert redact_url("rediss://user:pw@h:6380/0") == "rediss://user:***@h:6380/0"
    assert redact_url("redis://h:6379/0?password=pw&db=1") == "redis://h:6379/0?password=***&db=1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


# -- settings are immutable and validated however they are built -----------------------------


def test_settings_are_frozen_and_validated_on_replace() -> None:
    s = load_settings(None, {})
    with pytest.raises(AttributeError):
        s.redis_url = "redis://elsewhere"  # type: ignore[misc]  # proving it is frozen
    with pytest.raises(InvalidSettings, match=r"alicom\.queues must list at least one"):
        replace(s, queues=())
    assert isinstance(replace(s, queues=("SmsUp",)), Settings)
