"""The loader behind `consumer.settings.load_settings`: TOML text + environment -> Settings.

Steps, each adding one line per problem to a list raised at the end as `InvalidSettings`:
refuse AccessKey-like keys anywhere; apply `ALICOM_RECEIPTS_<SECTION>_<KEY>` overrides;
type every table by its dataclass (unknown keys and sections get a did-you-mean) and build
it (each section checks its own ranges and rules); build the handler specs; resolve the
endpoints and the queue prefix. `Settings` itself then checks the rules that tie sections
together. A problem about a value that came from the environment names the variable.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import typing
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import fields
from types import MappingProxyType
from typing import Any, TypeVar

from consumer.errors import ConfigError
from consumer.handler_api import HandlerPolicy
from consumer.keys import ENV_SECRET, key_secret, resolve_key_fields
from consumer.settings.model import (
    CONFIG_ENV,
    DEFAULT_CONFIG_TOML,
    SANDBOX_ACCOUNT_ID,
    SECTION_FIELDS,
    Endpoints,
    Settings,
    preset_endpoints,
)
from consumer.settings.push import PushSettings
from consumer.settings.reconcile import ReconcileSettings, TrackingSettings
from consumer.settings.schema import InvalidSettings, did_you_mean
from consumer.settings.sections import (
    AckSettings,
    AlicomSection,
    DeadLetterSettings,
    DedupSettings,
    HandlerSpec,
    LogSettings,
    MetricsSettings,
    PollSettings,
    RedisSection,
    RunSettings,
    ServiceSettings,
    TokenSettings,
    WorkerSettings,
)
from consumer.settings.values import EnvText, coerce

# tomllib is 3.11+; the package depends on tomli for 3.10 (same API).
tomllib: Any = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")

ENV_PREFIX = "ALICOM_RECEIPTS_"
#: Names under ENV_PREFIX that are not settings (the CLI's configuration file path, the
#: dedup key secret: a secret, so never a setting of the file).
ENV_RESERVED = frozenset({CONFIG_ENV, ENV_SECRET})

_CREDENTIAL_KEYS = frozenset({
    "access_key_secret", "accesskeysecret", "access_key_id", "accesskeyid", "security_token",
    "securitytoken", "alibaba_cloud_access_key_secret", "alibaba_cloud_access_key_id",
})
WHERE_THE_ACCESS_KEY_GOES = (
    "the AccessKey never goes in the configuration: give it as systemd credentials "
    "(LoadCredential= files access_key_id and access_key_secret, read from "
    "$CREDENTIALS_DIRECTORY), or the environment variables ALIBABA_CLOUD_ACCESS_KEY_ID and "
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET, or the Alibaba Cloud credentials file or RAM role"
)


#: Every `[section]` of the file and its dataclass: the schema. (`[[handlers]]` and
#: `[dedup_keys]` are read on their own: they are lists and maps, not fixed fields.)
SECTIONS: Mapping[str, type] = MappingProxyType({
    "alicom": AlicomSection, "redis": RedisSection, "poll": PollSettings, "ack": AckSettings,
    "worker": WorkerSettings, "dedup": DedupSettings, "deadletter": DeadLetterSettings,
    "log": LogSettings, "token": TokenSettings, "metrics": MetricsSettings,
    "service": ServiceSettings, "run": RunSettings, "push": PushSettings,
    "reconcile": ReconcileSettings, "tracking": TrackingSettings,
})


def env_var(section: str, key: str) -> str:
    """The environment variable that overrides `section.key`: ALICOM_RECEIPTS_POLL_POLLERS."""
    return f"{ENV_PREFIX}{section}_{key}".upper()

_HANDLER_KEYS = ("use", "types", "options", "name")
_POLICY_KEYS = tuple(f.name for f in dataclasses.fields(HandlerPolicy))  # deadline_s, ...
_T = TypeVar("_T")


def load(path: str | None, env: Mapping[str, str]) -> Settings:
    """See `consumer.settings.load_settings`."""
    text, source = _read(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    problems: list[str] = []
    _find_credentials(raw, "", problems)
    from_env = _apply_env(raw, env, problems)
    sections = _build_sections(raw, problems, from_env)
    handlers = _build_handlers(raw.get("handlers", []), problems)
    dedup_keys = _build_dedup_keys(raw.get("dedup_keys", {}), problems)
    alicom = sections.get("alicom")
    endpoints = prefix = None
    if isinstance(alicom, AlicomSection):
        endpoints = _endpoints(alicom, problems)
        prefix = _queue_prefix(alicom, problems)
    if len(sections) < len(SECTIONS) or endpoints is None or prefix is None:
        raise InvalidSettings(problems)
    try:
        settings = _assemble(sections, endpoints, prefix, handlers, dedup_keys, source)
        settings = dataclasses.replace(settings, key_secret=key_secret(env))
    except InvalidSettings as exc:  # cross-section rules: report them with the rest
        raise InvalidSettings([*problems, *_naming_vars(exc.problems, from_env)]) from None
    if problems:
        raise InvalidSettings(problems)
    return settings


def _assemble(sections: Mapping[str, object], endpoints: Endpoints, prefix: str,
              handlers: tuple[HandlerSpec, ...], dedup_keys: Mapping[str, tuple[str, ...]],
              source: str) -> Settings:
    alicom = _get(sections, "alicom", AlicomSection)
    kwargs = {name: sections[name] for name in SECTION_FIELDS}
    return Settings(endpoints=endpoints, queue_prefix=prefix, queues=alicom.queues,
                    redis_url=_get(sections, "redis", RedisSection).url,
                    redis_allow_eviction=_get(sections, "redis", RedisSection).allow_eviction,
                    handlers=handlers, dedup_keys=dedup_keys, source=source,
                    preset=alicom.preset, **kwargs)  # type: ignore[arg-type]


def _read(path: str | None) -> tuple[str, str]:
    if path is None:
        return DEFAULT_CONFIG_TOML, "<embedded default>"
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(), path
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: "
                          f"{exc.strerror or exc}") from exc


def _get(sections: Mapping[str, object], name: str, cls: type[_T]) -> _T:
    value = sections[name]
    if not isinstance(value, cls):  # pragma: no cover - _build_sections builds from SECTIONS
        raise TypeError(name)
    return value


def _find_credentials(node: Any, where: str, problems: list[str]) -> None:
    """Refuses AccessKey-like keys anywhere in the file (handler options included)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _find_credentials(item, f"{where}[{i}]", problems)
    elif isinstance(node, dict):
        for key, value in node.items():
            name = f"{where}.{key}" if where else key
            if key.lower() in _CREDENTIAL_KEYS:
                problems.append(f"{name} is not allowed: {WHERE_THE_ACCESS_KEY_GOES}")
            else:
                _find_credentials(value, name, problems)


def _apply_env(raw: dict[str, Any], env: Mapping[str, str],
               problems: list[str]) -> dict[str, str]:
    """Writes `ALICOM_RECEIPTS_<SECTION>_<KEY>` values into `raw`, as `_EnvText`; returns
    "section.key" -> the variable, for each setting the environment set."""
    from_env: dict[str, str] = {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in ENV_RESERVED:
            continue
        section, _, key = var[len(ENV_PREFIX):].lower().partition("_")
        if key in _CREDENTIAL_KEYS:
            problems.append(f"{var} is not allowed: {WHERE_THE_ACCESS_KEY_GOES}")
            continue
        cls = SECTIONS.get(section)
        if cls is None or key not in {f.name for f in fields(cls)}:
            every = [env_var(s, f.name) for s, c in SECTIONS.items() for f in fields(c)]
            problems.append(f"{var} is not a setting{did_you_mean(var, every)}")
            continue
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = EnvText(env[var])
            from_env[f"{section}.{key}"] = var
    return from_env


_SETTING_NAME = re.compile(r"^([a-z_]+\.[a-z_]+)\b")


def _naming_vars(problems: Sequence[str], from_env: Mapping[str, str]) -> list[str]:
    """Problems whose setting came from the environment, led by the variable's name: the
    user set the variable, so that is what they must fix."""
    out = []
    for problem in problems:
        match = _SETTING_NAME.match(problem)
        var = from_env.get(match.group(1)) if match else None
        out.append(f"{var}: {problem}" if var else problem)
    return out


def _build_sections(raw: Mapping[str, Any], problems: list[str],
                    from_env: Mapping[str, str]) -> dict[str, object]:
    built: dict[str, object] = {}
    for name in raw:
        if name not in SECTIONS and name not in {"handlers", "dedup_keys"}:
            hint = did_you_mean(name, [*SECTIONS, "handlers", "dedup_keys"])
            problems.append(f"[{name}] is not a section{hint}")
    for name, cls in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            problems.append(f"{name} must be a table ([{name}])")
            continue
        own: list[str] = []
        kwargs = _typed_table(name, cls, table, own)
        if kwargs is not None:
            try:
                built[name] = cls(**kwargs)
            except InvalidSettings as exc:  # the section's ranges and rules
                own.extend(exc.problems)
        problems.extend(_naming_vars(own, from_env))
    return built


def _typed_table(section: str, cls: type, table: Mapping[str, Any],
                 problems: list[str]) -> dict[str, Any] | None:
    """The table's values typed by `cls`'s fields, or None after adding its problems."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    ok = True
    for key, value in table.items():
        if key not in known:
            if key.lower() not in _CREDENTIAL_KEYS:  # those are reported on their own
                problems.append(f"{section}.{key} is not a setting{did_you_mean(key, known)}")
            ok = False
            continue
        try:
            kwargs[key] = coerce(value, hints[key])
        except ValueError as exc:
            problems.append(f"{section}.{key} {exc}, got {str(value)!r}")
            ok = False
    return kwargs if ok else None


def _build_dedup_keys(raw: Any, problems: list[str]) -> Mapping[str, tuple[str, ...]]:
    """`[dedup_keys]`: receipt class name -> the fields of its dedup key (checked)."""
    if not isinstance(raw, dict):
        problems.append("dedup_keys must be a table: ClassName = [\"field\", ...]")
        return MappingProxyType({})
    overrides: dict[str, tuple[str, ...]] = {}
    for name, value in raw.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append("dedup_keys.%s must be a list of field names" % name)
            continue
        overrides[name] = tuple(value)
    try:
        resolve_key_fields(overrides)
    except ConfigError as exc:
        problems.append(str(exc))
        return MappingProxyType({})
    return MappingProxyType(overrides)


def _build_handlers(raw: Any, problems: list[str]) -> tuple[HandlerSpec, ...]:
    if not isinstance(raw, list):
        problems.append("handlers must be an array of tables ([[handlers]])")
        return ()
    specs: list[HandlerSpec] = []
    for i, item in enumerate(raw):
        before = len(problems)
        spec = _handler(f"handlers[{i}]", item, problems)
        if spec is not None and len(problems) == before:
            specs.append(spec)
    return tuple(specs)


def _handler(where: str, item: Any, problems: list[str]) -> HandlerSpec | None:
    if not isinstance(item, dict):
        problems.append(f"{where} must be a table")
        return None
    known = [*_HANDLER_KEYS, *_POLICY_KEYS]
    problems.extend(f"{where}.{k} is not a setting{did_you_mean(k, known)}"
                    for k in item if k not in known and k.lower() not in _CREDENTIAL_KEYS)
    policy = HandlerPolicy(**{k: item[k] for k in _POLICY_KEYS if k in item})
    use, kinds, options, name = (item.get(k) for k in _HANDLER_KEYS)
    if not isinstance(use, str) or not use:
        problems.append(f"{where}.use must name a handler (an entry point name or module:attr)")
    elif kinds is not None and not (isinstance(kinds, list)
                                    and all(isinstance(t, str) for t in kinds)):
        problems.append(f"{where}.types must be a list of message types")
    elif options is not None and not isinstance(options, dict):
        problems.append(f"{where}.options must be a table")
    elif name is not None and not isinstance(name, str):
        problems.append(f"{where}.name must be a string")
    elif policy.problems(where):
        problems.extend(policy.problems(where))
    else:
        return HandlerSpec(use=use, types=None if kinds is None else tuple(kinds),
                           options=MappingProxyType(dict(options or {})), name=name,
                           policy=policy)
    return None


def _endpoints(a: AlicomSection, problems: list[str]) -> Endpoints | None:
    if a.preset == "custom":
        missing = [f"alicom.{k}" for k in ("mns_endpoint", "token_endpoint") if not getattr(a, k)]
        if missing:
            problems.append(f"alicom.preset custom needs {' and '.join(missing)}")
            return None
        base = Endpoints("", "", "https", "cn-hangzhou")
    else:
        try:
            base = preset_endpoints(a.preset)
        except ConfigError as exc:
            problems.append(str(exc))
            return None
    return Endpoints(
        mns_endpoint=a.mns_endpoint or base.mns_endpoint,
        token_endpoint=a.token_endpoint or base.token_endpoint,
        token_protocol=a.token_protocol or base.token_protocol,
        region_id=a.region_id or base.region_id,
    )


def _queue_prefix(a: AlicomSection, problems: list[str]) -> str | None:
    """"Alicom-Queue-<account id>-" from `queue_prefix`, else `account_id`, else the preset.

    The account id in a queue name is the customer's own (the SMS console shows the full
    queue name); the number in the public MNS host is Alibaba's queue owner, the same for
    everyone. So the host is used only for a `custom` endpoint that names the account, the
    sandbox uses its own account, and a public preset needs `account_id`.
    """
    if a.queue_prefix is not None:
        return a.queue_prefix
    account = a.account_id
    if account is None and a.preset == "sandbox":
        account = SANDBOX_ACCOUNT_ID
    if account is None and a.preset == "custom" and a.mns_endpoint:
        label = (urllib.parse.urlsplit(a.mns_endpoint).hostname or "").split(".")[0]
        account = label if label.isdigit() else None
    if account is None:
        problems.append(f"alicom.account_id is required with preset {a.preset!r}: your "
                        f"Alibaba Cloud account id, as in the queue name "
                        f"Alicom-Queue-<account id>-SmsReport shown in the SMS console")
        return None
    if not account.isdigit():
        problems.append(f"alicom.account_id must be the digits of your account id, "
                        f"got {account!r}")
        return None
    return f"Alicom-Queue-{account}-"
