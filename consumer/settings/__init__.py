"""Settings: one schema of frozen dataclasses, one loader, built once at start-up and passed
down.

`load_settings(path, env)` reads a TOML file (the embedded `DEFAULT_CONFIG_TOML` when `path`
is None), applies `ALICOM_RECEIPTS_<SECTION>_<KEY>` environment overrides typed by the
dataclass field (the one override rule, for every section), and validates the whole. Each
problem is one line naming the setting ("poll.wait_seconds must be 1-30, got 45", or the
variable when it came from the environment); all of them are raised together as one
`InvalidSettings` (a `ConfigError`). Nothing here reads the environment on import.

Where things are: `schema` (ranges, the `Section` base), `sections` (the worker's sections
and `HandlerSpec`), `push` (`[push]`), `reconcile` (`[reconcile]`, `[tracking]`), `model`
(`Settings`, endpoints and presets, cross-section rules), `load` (the loader).
The AccessKey is never part of the settings (see `consumer.clients.credentials`).
"""

from __future__ import annotations

from collections.abc import Mapping

from consumer.settings.load import ENV_PREFIX, SECTIONS, env_var, load
from consumer.settings.model import (
    CONFIG_ENV,
    CONFIG_HELP,
    DEFAULT_CONFIG_TOML,
    PRESETS,
    SANDBOX_ACCESS_KEY_ID,
    SANDBOX_ACCESS_KEY_SECRET,
    SANDBOX_ACCOUNT_ID,
    SANDBOX_ADDRESS,
    SECTION_FIELDS,
    Endpoints,
    Settings,
    config_path,
    preset_endpoints,
)
from consumer.settings.push import PushSettings
from consumer.settings.reconcile import ReconcileSettings, TrackingSettings
from consumer.settings.schema import (
    InvalidSettings,
    Range,
    did_you_mean,
    parse_address,
    redact_url,
)
from consumer.settings.sections import (
    QUEUE_MESSAGE_TYPES,
    AckSettings,
    DeadLetterSettings,
    DedupSettings,
    HandlerSpec,
    LogSettings,
    MetricsSettings,
    PollSettings,
    RunSettings,
    ServiceSettings,
    TokenSettings,
    WorkerSettings,
)

__all__ = [
    "CONFIG_ENV", "CONFIG_HELP", "DEFAULT_CONFIG_TOML", "ENV_PREFIX", "PRESETS",
    "QUEUE_MESSAGE_TYPES",
    "SANDBOX_ACCESS_KEY_ID", "SANDBOX_ACCESS_KEY_SECRET", "SANDBOX_ACCOUNT_ID",
    "SANDBOX_ADDRESS", "SECTIONS", "SECTION_FIELDS", "AckSettings",
    "DeadLetterSettings", "DedupSettings", "Endpoints", "HandlerSpec", "InvalidSettings",
    "LogSettings", "MetricsSettings", "PollSettings", "PushSettings", "Range",
    "ReconcileSettings", "RunSettings", "ServiceSettings", "Settings", "TokenSettings",
    "TrackingSettings", "WorkerSettings", "config_path", "did_you_mean", "env_var",
    "load_settings", "parse_address", "preset_endpoints", "redact_url",
]


def load_settings(path: str | None, env: Mapping[str, str]) -> Settings:
    """Settings from the TOML file at `path` (the embedded `DEFAULT_CONFIG_TOML` when None)
    with `ALICOM_RECEIPTS_<SECTION>_<KEY>` overrides from `env` (e.g. ALICOM_RECEIPTS_REDIS_URL,
    ALICOM_RECEIPTS_POLL_POLLERS, ALICOM_RECEIPTS_PUSH_SECRET; lists comma-separated; "" or
    "none" clears an optional). Missing settings take their dataclass defaults. Raises
    `InvalidSettings` (a ConfigError) listing every problem.
    """
    return load(path, env)
