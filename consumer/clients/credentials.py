"""The long-lived AccessKey that asks Dybaseapi for temporary MNS tokens.

`load_access_key(env)` looks, in order, at:

1. systemd credentials: the files `access_key_id` and `access_key_secret` (and optionally
   `security_token`) in `$CREDENTIALS_DIRECTORY` (`LoadCredential=` in the unit);
2. the environment variables `ALIBABA_CLOUD_ACCESS_KEY_ID` / `ALIBABA_CLOUD_ACCESS_KEY_SECRET`
   (and `ALIBABA_CLOUD_SECURITY_TOKEN` for an STS key), read from `env`;
3. the rest of the Alibaba Cloud default chain, through `alibabacloud_credentials`
   (`Client()`): the credentials file (`~/.alibabacloud/credentials.ini` or
   `ALIBABA_CLOUD_CREDENTIALS_FILE`), the aliyun CLI profile, an ECS RAM role, OIDC, a
   credentials URI. That chain is the SDK's own and reads the *process* environment as it was
   when the SDK was imported, not `env`.

A key from the chain may be temporary (a RAM role gives a security token too, and renews
it): the SDK client is kept in `AccessKey.credential_client` so the token service hands it to
the Tea client, which then asks it for fresh values on every request.

The secret and the security token never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consumer.errors import ConfigError

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


def load_access_key(env: Mapping[str, str]) -> AccessKey:
    """The AccessKey from the first source that has one (see the module docstring).

    Raises ConfigError saying what is missing and where to put the key; a source that is
    half there (an id without a secret) is an error rather than a reason to look further.
    """
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        key = _from_credentials_directory(directory)
        if key is not None:
            return key
    key = _from_environment(env)
    if key is not None:
        return key
    return _from_default_chain()


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


def _from_default_chain() -> AccessKey:
    """The Alibaba Cloud default credentials chain (files, CLI profile, ECS RAM role, ...)."""
    # Imported here: the SDK reads the process environment when it is first imported, and
    # building the chain can start a refresh thread for a RAM role; only pay when needed.
    from alibabacloud_credentials.client import Client  # noqa: PLC0415
    from alibabacloud_credentials.exceptions import CredentialException  # noqa: PLC0415

    try:
        client = Client()
        model = client.get_credential()
    except (CredentialException, ValueError, OSError) as exc:
        detail = getattr(exc, "message", None) or str(exc)
        raise ConfigError(f"no Alibaba Cloud AccessKey found ({_trim(detail)}): "
                          f"{_WHAT_TO_DO}") from exc
    access_key_id = model.access_key_id or ""
    secret = model.access_key_secret or ""
    if not access_key_id or not secret:
        raise ConfigError(f"the Alibaba Cloud credentials chain gave no AccessKey: {_WHAT_TO_DO}")
    provider = model.provider_name or model.type or "unknown"
    return AccessKey(access_key_id, secret, model.security_token or None,
                     source=f"default-chain/{provider}", credential_client=client)


def _trim(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
