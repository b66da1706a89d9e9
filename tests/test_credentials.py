"""Where the long-lived AccessKey comes from, and that it never shows its secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alicom_sandbox.testing import SandboxHandle, running_sandbox
from consumer.clients.credentials import AccessKey, load_access_key
from consumer.clients.tokens import TokenService
from consumer.errors import ConfigError
from consumer.settings import Endpoints

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cred-secret-0123456789"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def credentials_dir(tmp_path: Path, **files: str) -> str:
    directory = tmp_path / "credentials"
    directory.mkdir()
    for name, value in files.items():
        (directory / name).write_text(value, encoding="utf-8")
    return str(directory)


# -- systemd's $CREDENTIALS_DIRECTORY ---------------------------------------------------------


def test_the_key_comes_from_the_systemd_credentials_directory_first(tmp_path: Path) -> None:
    directory = credentials_dir(tmp_path, access_key_id="LTAIfromfiles\n",
                                access_key_secret=SECRET + "\n")
    key = load_access_key({"CREDENTIALS_DIRECTORY": directory,
                           "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIfromenv",
                           "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "env-secret"})
    assert (key.access_key_id, key.access_key_secret) == ("LTAIfromfiles", SECRET)
    assert key.security_token is None
    assert key.source == "credentials-directory"


def test_a_security_token_file_makes_it_an_sts_key(tmp_path: Path) -> None:
    directory = credentials_dir(tmp_path, access_key_id="STS.abc", access_key_secret=SECRET,
                                security_token="CAIStoken")
    key = load_access_key({"CREDENTIALS_DIRECTORY": directory})
    assert key.security_token == "CAIStoken"


def test_a_credentials_directory_without_our_files_is_passed_over(tmp_path: Path) -> None:
    directory = credentials_dir(tmp_path, redis_password="x")
    key = load_access_key({"CREDENTIALS_DIRECTORY": directory,
                           "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIfromenv",
                           "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET})
    assert key.access_key_id == "LTAIfromenv"


def test_a_half_configured_credentials_directory_says_what_is_missing(tmp_path: Path) -> None:
    directory = credentials_dir(tmp_path, access_key_id="LTAIonly")
    with pytest.raises(ConfigError, match="has no access_key_secret file: add "
                                          "LoadCredential=access_key_secret"):
        load_access_key({"CREDENTIALS_DIRECTORY": directory})


def test_an_empty_credential_file_is_refused(tmp_path: Path) -> None:
    directory = credentials_dir(tmp_path, access_key_id="LTAIx", access_key_secret="\n")
    with pytest.raises(ConfigError, match="access_key_secret is empty"):
        load_access_key({"CREDENTIALS_DIRECTORY": directory})


# -- the environment ----------------------------------------------------------------------------


def test_the_key_comes_from_the_environment(tmp_path: Path) -> None:
    key = load_access_key({"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIenv",
                           "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET,
                           "ALIBABA_CLOUD_SECURITY_TOKEN": "CAISenv"})
    assert (key.access_key_id, key.access_key_secret, key.security_token) == (
        "LTAIenv", SECRET, "CAISenv")
    assert key.source == "environment"
    assert key.credential_client is None


def test_an_id_without_a_secret_in_the_environment_is_an_error() -> None:
    with pytest.raises(ConfigError, match="ALIBABA_CLOUD_ACCESS_KEY_ID is set but "
                                          "ALIBABA_CLOUD_ACCESS_KEY_SECRET is not"):
        load_access_key({"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAIenv"})


def test_the_repr_masks_the_secret_and_the_token() -> None:
    key = AccessKey("LTAIshown", SECRET, "CAIShidden-token", source="environment")
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert "LTAIshown" in text
        assert SECRET not in text
        assert "CAIShidden-token" not in text


# -- a key from the files fetches real tokens ---------------------------------------------------


def test_a_key_from_the_credentials_directory_gets_a_token(
        tmp_path: Path, sandbox: SandboxHandle) -> None:
    directory = credentials_dir(tmp_path, access_key_id=sandbox.access_key_id + "\n",
                                access_key_secret=sandbox.access_key_secret + "\n")
    key = load_access_key({"CREDENTIALS_DIRECTORY": directory})
    host = sandbox.endpoint.removeprefix("http://")
    service = TokenService(key, Endpoints(sandbox.endpoint, host, "http", "cn-hangzhou"))
    assert service.token("SmsReport").access_key_id.startswith("STS.")


# -- the Alibaba Cloud default chain (its own process: the SDK reads the environment once) ------

CHAIN_PROGRAM = textwrap.dedent("""
    import json, os, sys
    from consumer.clients.credentials import load_access_key
    from consumer.errors import ConfigError
    from consumer.settings import Endpoints
    from consumer.clients.tokens import TokenService
    try:
        key = load_access_key(os.environ)
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
    endpoint = os.environ["SANDBOX_ENDPOINT"]
    service = TokenService(key, Endpoints(endpoint, endpoint.removeprefix("http://"), "http",
                                          "cn-hangzhou"))
    print(json.dumps({"id": key.access_key_id, "source": key.source, "repr": repr(key),
                      "chain": key.credential_client is not None,
                      "token": service.token("SmsUp").access_key_id}))
""")


def run_chain(tmp_path: Path, sandbox: SandboxHandle, **extra_env: str) -> dict[str, Any]:
    """Runs CHAIN_PROGRAM with an environment holding no AccessKey but `extra_env`."""
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT), "SANDBOX_ENDPOINT": sandbox.endpoint,
        # No metadata service or CLI profile on a test machine: keep the chain off them.
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
        "ALIBABA_CLOUD_CLI_PROFILE_DISABLED": "true",
        **extra_env,
    }
    done = subprocess.run([sys.executable, "-c", CHAIN_PROGRAM], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert SECRET not in done.stdout + done.stderr
    assert sandbox.access_key_secret not in done.stdout + done.stderr
    return result


def test_the_default_chain_reads_the_alibaba_cloud_credentials_file(
        tmp_path: Path, sandbox: SandboxHandle) -> None:
    ini = tmp_path / "credentials.ini"
    ini.write_text(textwrap.dedent(f"""
        [default]
        type = access_key
        access_key_id = {sandbox.access_key_id}
        access_key_secret = {sandbox.access_key_secret}
    """), encoding="utf-8")
    result = run_chain(tmp_path, sandbox, ALIBABA_CLOUD_CREDENTIALS_FILE=str(ini))
    assert result["id"] == sandbox.access_key_id
    assert result["source"].startswith("default-chain/")
    assert result["chain"] is True
    assert result["token"].startswith("STS.")  # the Tea client signed with the chain's key


def test_no_key_anywhere_is_a_config_error_saying_where_to_put_it(
        tmp_path: Path, sandbox: SandboxHandle) -> None:
    result = run_chain(tmp_path, sandbox)
    assert result["error"].startswith("no Alibaba Cloud AccessKey found")
    assert "LoadCredential=access_key_id" in result["error"]
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" in result["error"]
