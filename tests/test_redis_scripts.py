"""Every Lua script follows the rule Tair's cluster proxy enforces (and that keeps a script
legal on a Redis Cluster): it touches only keys passed in KEYS, each written literally as
KEYS[n] as the key argument of a redis.call, never through a variable or an expression.

The one exception is a script marked `-- one slot, keys by index` (a batch's keys, all under
one hash tag, read as KEYS[<a variable>]): a Redis Cluster takes it, a proxy may refuse it,
and its caller then falls back to literal-key calls (tested with its store). It is still held
to everything else: keys only from KEYS, as a call's key argument, commands literal."""

from __future__ import annotations

import ast
import re
from pathlib import Path

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
    """Every string constant in `consumer`'s source that is a Lua script calling Redis
    (read with ast: nothing is imported or run), by module path and line."""
    found: dict[str, str] = {}
    root = Path(consumer.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and "redis.call(" in node.value and "redis.call(" in node.value.lstrip()
                    and _looks_like_lua(node.value)):
                found[f"{path.relative_to(root.parent)}:{node.lineno}"] = node.value
    return found


def _looks_like_lua(text: str) -> bool:
    """A script, not a docstring that mentions redis.call."""
    return bool(re.search(r"^\s*(local |return |if |for |redis\.p?call\()", text, re.M)) and (
        "ARGV" in text or "KEYS" in text)


SCRIPTS = _scripts()


BY_INDEX = "-- one slot, keys by index"


def problems_of(script: str) -> list[str]:
    """What in `script` breaks the rule, one line each; empty when it keeps it."""
    problems = []
    index = r"\d+|[a-z_][a-z0-9_]*" if BY_INDEX in script else r"\d+"
    for match in _KEYS_USE.finditer(script):
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
    assert any(name.startswith("consumer/reports/delivery_stats.py:") for name in SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_names_its_keys_literally_in_KEYS(name: str) -> None:  # noqa: N802
    assert problems_of(SCRIPTS[name]) == []


def test_the_dedup_scripts_are_single_key_calls_too() -> None:
    dedup = [name for name in SCRIPTS if name.startswith("consumer/pipeline/dedup_scripts.py:")]
    assert len(dedup) >= 4 and not any(problems_of(SCRIPTS[name]) for name in dedup)


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
