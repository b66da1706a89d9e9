"""Every Lua script follows the rule Tair's cluster proxy enforces (and that keeps a script
legal on a Redis Cluster): it touches only keys passed in KEYS, each written literally as
KEYS[n] as the key argument of a redis.call, never through a variable or an expression.

The one exception is a script marked `-- one slot, keys by index` (a batch's keys, all under
one hash tag, read as KEYS[<a variable>]): a Redis Cluster takes it, a proxy may refuse it,
and its caller then falls back to literal-key calls (tested with its store). It is still held
to everything else: keys only from KEYS, as a call's key argument, commands literal.

The other is a script marked `-- single Redis only` (dedup's batch scripts, made from its
single-key ones): its keys lie in many slots and are read in a loop (KEYS[<an expression>],
#KEYS), and its store sends it only to a single Redis. It too takes keys only from KEYS, as a
call's key argument, with literal commands."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
import redis

import consumer
from consumer.clients.redis_scripts import packed

_CALL = re.compile(r"redis\.p?call\(\s*([^,)]*)\s*(?:,\s*([^,)]*))?")
_KEYS_USE = re.compile(r"KEYS(\s*\[\s*([^\]]*)\])?")
# Commands whose first argument is not a key (none are used today; listed so a use is a
# decision, not an accident).
_KEYLESS = frozenset({"TIME", "PING"})


def _scripts() -> dict[str, str]:
    """Every module-level string of `consumer` that is a Lua script calling Redis, by module
    and name: the constants themselves (imported), so a script composed from fragments is
    checked as Redis gets it. A text held under two names is listed once."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    for module in pkgutil.walk_packages(consumer.__path__, "consumer."):
        if module.name.endswith(".__main__"):
            continue  # runs the command line
        for name, value in vars(importlib.import_module(module.name)).items():
            if (isinstance(value, str) and value not in seen and "redis.call(" in value
                    and _looks_like_lua(value)):
                seen.add(value)
                found[f"{module.name}.{name}"] = value
    return found


def _looks_like_lua(text: str) -> bool:
    """A script, not a docstring that mentions redis.call."""
    return bool(re.search(r"^\s*(local |return |if |for |redis\.p?call\()", text, re.M)) and (
        "ARGV" in text or "KEYS" in text)


SCRIPTS = _scripts()


BY_INDEX = "-- one slot, keys by index"
SINGLE_REDIS = "-- single Redis only"


def _index(script: str) -> str:
    """The pattern of what may stand between KEYS' brackets in `script`."""
    if SINGLE_REDIS in script:
        return r"[^\]]+"
    return r"\d+|[a-z_][a-z0-9_]*" if BY_INDEX in script else r"\d+"


def problems_of(script: str) -> list[str]:
    """What in `script` breaks the rule, one line each; empty when it keeps it."""
    problems = []
    index = _index(script)
    for match in _KEYS_USE.finditer(script):
        if (match.group(1) is None and SINGLE_REDIS in script
                and script[match.start() - 1] == "#"):
            continue  # the batch's key count
        if match.group(1) is None or not re.fullmatch(index, match.group(2).strip()):
            problems.append(f"KEYS used other than as KEYS[<number>]: {match.group(0)!r}")
    for match in _CALL.finditer(script):
        command, key = match.group(1).strip(), (match.group(2) or "").strip()
        if not re.fullmatch(r"'[A-Za-z]+'|\"[A-Za-z]+\"", command):
            problems.append(f"a command name that is not a literal: {command!r}")
        elif command.strip("'\"").upper() not in _KEYLESS and not re.fullmatch(
                rf"KEYS\[(?:{index})\]", key):
            problems.append(f"{command} on {key!r}: its key must be KEYS[<number>]")
    # A KEYS[n] anywhere but as a call's key (e.g. `local k = KEYS[1]`) is an expression.
    as_keys = len(re.findall(rf"redis\.p?call\(\s*'[A-Za-z]+'\s*,\s*KEYS\[(?:{index})\]",
                             script))
    if as_keys != len(re.findall(rf"KEYS\[(?:{index})\]", script)):
        problems.append("KEYS[n] used outside a redis.call's key argument")
    return problems


def test_the_scripts_are_found() -> None:
    # A walk that found nothing would make the rule test below pass vacuously.
    assert len(SCRIPTS) >= 10, sorted(SCRIPTS)
    assert any(name.startswith("consumer.reports.delivery_stats.") for name in SCRIPTS)
    # Composed from fragments: found as built, both forms of the send tracker's settle.
    assert {"consumer.reports.tracking_scripts.CLEAR_ON_DAY_AND_SETTLE",
            "consumer.reports.tracking_scripts.CLEAR_ON_DAY_AND_SETTLE_MANY",
            "consumer.pipeline.dedup_scripts.CLAIM_MANY"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_names_its_keys_literally_in_KEYS(name: str) -> None:  # noqa: N802
    assert problems_of(SCRIPTS[name]) == []


def test_only_dedups_batch_scripts_read_keys_from_many_slots() -> None:
    assert sorted(name for name, script in SCRIPTS.items() if SINGLE_REDIS in script) == [
        "consumer.pipeline.dedup_scripts.CLAIM_MANY",
        "consumer.pipeline.dedup_scripts.COMPLETE_MANY"]


@pytest.mark.parametrize(("script", "problem"), [
    ("for i, key in ipairs(KEYS) do redis.call('GET', key) end",
     "KEYS used other than as KEYS[<number>]: 'KEYS'"),
    ("redis.call('SET', KEYS[i], 1)", "KEYS used other than as KEYS[<number>]: 'KEYS[i]'"),
    ("local k = KEYS[1]\nredis.call('GET', k)", "'GET' on 'k': its key must be KEYS[<number>]"),
    ("redis.call('HSET', ARGV[1] .. ':h', 'f', 1)",
     "'HSET' on \"ARGV[1] .. ':h'\": its key must be KEYS[<number>]"),
    ("redis.call(cmd, KEYS[1])", "a command name that is not a literal: 'cmd'"),
    (BY_INDEX + "\nredis.call('SET', KEYS[i + 1], 1)",
     "KEYS used other than as KEYS[<number>]: 'KEYS[i + 1]'"),
    (BY_INDEX + "\nlocal k = KEYS[i]\nredis.call('GET', k)",
     "'GET' on 'k': its key must be KEYS[<number>]"),
    (SINGLE_REDIS + "\nfor i, key in ipairs(KEYS) do redis.call('GET', key) end",
     "KEYS used other than as KEYS[<number>]: 'KEYS'"),
    (SINGLE_REDIS + "\nlocal k = KEYS[n + i]\nredis.call('GET', k)",
     "'GET' on 'k': its key must be KEYS[<number>]"),
])
def test_the_checker_catches_each_kind_of_break(script: str, problem: str) -> None:
    assert problem in problems_of(script)


@pytest.mark.parametrize("args", [
    ("sha", 1, "alicom:dedup:SmsReport:0123456789abcdef", "owner", 60000),
    ("sha", 2, "k\u00e9y:\u4e2d\u6587", b"\x00\xffbytes", -7, 3.5, ""),
    ("sha", 1, "k", bytearray(b"ba"), memoryview(b"mv")),  # hiredis refuses these two
])
def test_a_batch_is_packed_to_the_very_bytes_redis_py_writes(args: tuple[object, ...]) -> None:
    connection = redis.Redis().connection_pool.make_connection()  # never connects
    commands = [("EVALSHA", *args), ("WAIT", 1, 100)]
    assert _wire(packed(connection, commands)) == _wire(
        connection.pack_commands(commands))  # type: ignore[no-untyped-call]


def _wire(packed_commands: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(chunk) for chunk in packed_commands)
