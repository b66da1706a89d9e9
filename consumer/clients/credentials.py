"""The long-lived AccessKey that asks Dybaseapi for temporary MNS tokens.

`load_access_key(env)` looks, in order, at:

1. systemd credentials: the files `access_key_id` and `access_key_secret` (and optionally
   `security_token`) in `$CREDENTIALS_DIRECTORY` (`LoadCredential=` in the unit);
2. the environment variables `ALIBABA_CLOUD_ACCESS_KEY_ID` / `ALIBABA_CLOUD_ACCESS_KEY_SECRET`
   (and `ALIBABA_CLOUD_SECURITY_TOKEN` for an STS key), read from `env`;
3. with `preset = "sandbox"`, the sandbox's documented local key (it is valid nowhere else,
   so nothing real is ever tried with it);
4. otherwise the rest of the Alibaba Cloud default chain, through `alibabacloud_credentials`
   (`Client()`): the credentials file (`~/.alibabacloud/credentials.ini` or
   `ALIBABA_CLOUD_CREDENTIALS_FILE`), the aliyun CLI profile, an ECS RAM role, OIDC, a
   credentials URI. That chain is the SDK's own and reads the *process* environment as it was
   when the SDK was imported, not `env`. Its own log lines and tracebacks are kept quiet
   while we look: when it finds nothing, one `ConfigError` line says what was tried and what
   to do. When the host is an ECS instance (or names a RAM role) and the metadata service
   did not answer, that is `StartupUnavailable` instead: temporary, worth a restart.

A key from the chain may be temporary (a RAM role gives a security token too, and renews
it): the SDK client is kept in `AccessKey.credential_client` so the token service hands it to
the Tea client, which then asks it for fresh values on every request.

The secret and the security token never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consumer.errors import ConfigError, StartupUnavailable, clipped
from consumer.settings import SANDBOX_ACCESS_KEY_ID, SANDBOX_ACCESS_KEY_SECRET

ID_FILE = "access_key_id"
SECRET_FILE = "access_key_secret"  # noqa: S105 - a file name, not a secret
TOKEN_FILE = "security_token"  # noqa: S105 - a file name, not a secret
ENV_ID = "ALIBABA_CLOUD_ACCESS_KEY_ID"
ENV_SECRET = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_TOKEN = "ALIBABA_CLOUD_SECURITY_TOKEN"  # noqa: S105 - a variable name, not a secret

_WHAT_TO_DO = (
    "give the AccessKey (a RAM user allowed dybaseapi:QueryTokenForMnsQueue) as systemd "
    "credentials (LoadCredential=access_key_id:... and LoadCredential=access_key_secret:...), "
    "or in ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or in the Alibaba "
    "Cloud credentials file (~/.alibabacloud/credentials.ini), or run on ECS with a RAM role"
)


@dataclass(frozen=True, repr=False)
class AccessKey:
    """An AccessKey id and secret, with the security token of an STS key.

    `source` says where it came from ("credentials-directory", "environment",
    "default-chain/<provider>"). `credential_client` is the `alibabacloud_credentials`
    client when the key came from the default chain (it renews role credentials); None
    otherwise. The repr masks the secret and the token.
    """

    access_key_id: str
    access_key_secret: str
    security_token: str | None = None
    source: str = ""
    credential_client: Any = field(default=None, compare=False)

    def __repr__(self) -> str:
        token = None if self.security_token is None else "***"
        return (f"AccessKey(access_key_id={self.access_key_id!r}, access_key_secret='***', "
                f"security_token={token!r}, source={self.source!r})")

    __str__ = __repr__


def load_access_key(env: Mapping[str, str], preset: str | None = None) -> AccessKey:
    """The AccessKey from the first source that has one (see the module docstring);
    `preset` is `Settings.preset` ("sandbox" allows the sandbox's documented key).

    Raises ConfigError saying what was tried and where to put the key (one line); a source
    that is half there (an id without a secret) is an error rather than a reason to look
    further. Raises StartupUnavailable when only the ECS metadata service could tell, and it
    did not answer.
    """
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        key = _from_credentials_directory(directory)
        if key is not None:
            return key
    key = _from_environment(env)
    if key is not None:
        return key
    if preset == "sandbox":
        return AccessKey(SANDBOX_ACCESS_KEY_ID, SANDBOX_ACCESS_KEY_SECRET,
                         source="sandbox-documented-default")
    return _from_default_chain(env)


def _from_credentials_directory(directory: str) -> AccessKey | None:
    """The key from systemd's credentials directory, or None when it holds neither file
    (the unit may load other credentials only)."""
    present = {name: os.path.isfile(os.path.join(directory, name))
               for name in (ID_FILE, SECRET_FILE, TOKEN_FILE)}
    if not present[ID_FILE] and not present[SECRET_FILE]:
        return None
    missing = [name for name in (ID_FILE, SECRET_FILE) if not present[name]]
    if missing:
        raise ConfigError(f"$CREDENTIALS_DIRECTORY ({directory}) has no {missing[0]} file: "
                          f"add LoadCredential={missing[0]}:<path> to the unit")
    access_key_id = _read_credential(directory, ID_FILE)
    secret = _read_credential(directory, SECRET_FILE)
    token = _read_credential(directory, TOKEN_FILE) if present[TOKEN_FILE] else None
    return AccessKey(access_key_id, secret, token, source="credentials-directory")


def _read_credential(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()  # files written by editors end with a newline
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the credential {path}: {reason}") from exc
    if not value:
        raise ConfigError(f"the credential {path} is empty")
    return value


def _from_environment(env: Mapping[str, str]) -> AccessKey | None:
    access_key_id, secret = env.get(ENV_ID, ""), env.get(ENV_SECRET, "")
    if not access_key_id and not secret:
        return None
    if not access_key_id or not secret:
        have, lack = (ENV_ID, ENV_SECRET) if access_key_id else (ENV_SECRET, ENV_ID)
        raise ConfigError(f"{have} is set but {lack} is not: set both, or neither")
    return AccessKey(access_key_id, secret, env.get(ENV_TOKEN) or None, source="environment")


def quiet_sdk_loggers() -> None:
    """Keeps the SDKs' own loggers above DEBUG: the Tea core's (request headers) and the
    credentials SDK's refresher, which older releases set to DEBUG at import (it then says
    "Shutting down executor..." at every exit, past our logging configuration)."""
    import alibabacloud_credentials.provider.refreshable  # noqa: F401, PLC0415 - sets DEBUG on import

    for name in ("darabonba-core", "alibabacloud-tea",
                 "alibabacloud_credentials.provider.refreshable"):
        logging.getLogger(name).setLevel(logging.INFO)


def _from_default_chain(env: Mapping[str, str]) -> AccessKey:
    """The Alibaba Cloud default credentials chain (files, CLI profile, ECS RAM role, ...)."""
    # Imported here: the SDK reads the process environment when it is first imported, and
    # building the chain can start a refresh thread for a RAM role; only pay when needed.
    from alibabacloud_credentials.client import Client  # noqa: PLC0415
    from alibabacloud_credentials.exceptions import CredentialException  # noqa: PLC0415

    quiet_sdk_loggers()
    # Its loggers ("credentials", or by module in older releases) print each failed provider
    # with a traceback; the summary below says the same in one line.
    sdk_logs = [logging.getLogger(name) for name in (
        "credentials", *(n for n in logging.root.manager.loggerDict
                         if n.startswith("alibabacloud_credentials")))]
    was_disabled = [(log, log.disabled) for log in sdk_logs]
    for log in sdk_logs:
        log.disabled = True
    try:
        client = Client()
        model = client.get_credential()
    except (CredentialException, ValueError, OSError) as exc:
        detail = str(getattr(exc, "message", None) or exc)
        tried = chain_failures(detail)
        if _metadata_down(tried, env):
            raise StartupUnavailable(
                "the ECS metadata service did not answer for the RAM role's credentials "
                f"({clipped(tried['ECS RAM role'], 120)})") from exc
        raise ConfigError(f"no Alibaba Cloud AccessKey found; tried $CREDENTIALS_DIRECTORY, "
                          f"{ENV_ID}/{ENV_SECRET}, {_summary(tried, detail)}; to fix: "
                          f"{_WHAT_TO_DO}") from exc
    finally:
        for log, disabled in was_disabled:
            log.disabled = disabled
    access_key_id = model.access_key_id or ""
    secret = model.access_key_secret or ""
    if not access_key_id or not secret:
        raise ConfigError(f"the Alibaba Cloud credentials chain gave no AccessKey: {_WHAT_TO_DO}")
    provider = model.provider_name or model.type or "unknown"
    return AccessKey(access_key_id, secret, model.security_token or None,
                     source=f"default-chain/{provider}", credential_client=client)


_PROVIDERS = {
    "EnvironmentVariableCredentialsProvider": "environment",
    "OIDCRoleArnCredentialsProvider": "OIDC",
    "CLIProfileCredentialsProvider": "aliyun CLI profile",
    "ProfileCredentialsProvider": "credentials file",
    "EcsRamRoleCredentialsProvider": "ECS RAM role",
    "URLCredentialsProvider": "credentials URI",
}


def chain_failures(detail: str) -> dict[str, str]:
    """Provider label -> why it found nothing, from the default chain's error message
    ("unable to load credentials from any of the providers in the chain: ['Name: why', ...]")."""
    listed = detail.partition("chain: ")[2]
    try:
        items = ast.literal_eval(listed) if listed else []
    except (ValueError, SyntaxError):
        items = []
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        name, _, why = str(item).partition(": ")
        out[_PROVIDERS.get(name, name)] = " ".join(why.split())
    return out


def _summary(tried: Mapping[str, str], detail: str) -> str:
    if not tried:
        return "the default chain (%s)" % clipped(detail, 200)
    return "the default chain: " + ", ".join(
        "%s (%s)" % (label, clipped(why, 70)) for label, why in tried.items())


def _metadata_down(tried: Mapping[str, str], env: Mapping[str, str]) -> bool:
    """True when the ECS RAM role is what should have answered and its service did not: on
    an ECS instance (or with a role named), anything but the service's "no such role" (an
    HTTP 4xx) is an outage (not booted yet, throttled, a network blip)."""
    why = tried.get("ECS RAM role")
    if why is None or re.search(r"HttpCode=4\d\d", why):
        return False
    return bool(env.get("ALIBABA_CLOUD_ECS_METADATA")) or _on_ecs()


def _on_ecs() -> bool:
    """This host is an Alibaba Cloud ECS instance (its DMI vendor says so)."""
    try:
        with open("/sys/class/dmi/id/sys_vendor", encoding="utf-8") as fh:
            return "alibaba" in fh.read().lower()
    except OSError:
        return False
