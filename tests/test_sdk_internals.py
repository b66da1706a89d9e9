"""The SDK internals the code relies on are still there, with the shapes it uses.

consumer.sources.mns.queue drives aliyun-mns-sdk's `MNSClient` step by step (its validators,
signed headers, HTTP connection and error decoding) to read batch receives itself; the token
service builds `mns.auth.Credentials`; the credentials module reads the default chain's
error text. None of that is public API: this test fails first when an upgrade changes it,
which is why pyproject.toml pins those SDKs tightly. (That the calls work end to end is the
sandbox tests' job, over the real protocol.)
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from mns.account import Account
from mns.auth import Credentials
from mns.mns_client import MNSClient
from mns.mns_exception import MNSServerException
from mns.mns_http import MNSHttp, RequestInternal
from mns.mns_request import BatchDeleteMessageRequest, BatchReceiveMessageRequest
from mns.mns_tool import BatchDeleteMessageValidator, BatchReceiveMessageValidator
from mns.mns_xml_handler import XMLNS, BatchDeleteMessageDecoder, ErrorDecoder
from mns.queue import Queue

from consumer.clients.credentials import chain_failures


def params(fn: Callable[..., object]) -> list[str]:
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize(("fn", "expected"), [
    (MNSClient.build_header, ["self", "req", "req_inter"]),
    (MNSClient.check_status, ["self", "req_inter", "resp_inter", "resp", "decoder"]),
    (MNSClient.set_connection_timeout, ["self", "connection_timeout"]),
    (MNSHttp.send_request, ["self", "req_inter"]),
    (RequestInternal.__init__, ["self", "method", "uri", "header", "data"]),
    (BatchReceiveMessageRequest.__init__,
     ["self", "queue_name", "batch_size", "base64decode", "wait_seconds"]),
    (BatchDeleteMessageRequest.__init__, ["self", "queue_name", "receipt_handle_list"]),
    (Queue.set_encoding, ["self", "encoding"]),
    (Credentials.__init__, ["self", "access_key_id", "access_key_secret", "security_token"]),
    (MNSServerException.__init__,
     ["self", "type", "message", "request_id", "host_id", "sub_errors"]),
])
def test_the_mns_sdk_calls_we_make_keep_their_signatures(
        fn: Callable[..., object], expected: list[str]) -> None:
    assert params(fn) == expected


def test_the_mns_sdk_pieces_we_read_are_there() -> None:
    assert XMLNS == "http://mns.aliyuncs.com/doc/v1/"
    assert inspect.signature(MNSClient.check_status).parameters["decoder"].default is ErrorDecoder
    assert callable(BatchReceiveMessageValidator.validate)
    assert callable(BatchDeleteMessageValidator.validate)
    assert callable(BatchDeleteMessageDecoder.decodeError)  # check_status calls it
    account = Account("http://127.0.0.1:1", credentials_provider=_NoCredentials())
    client = account.mns_client
    assert client.is_https is False
    assert hasattr(client, "http") and callable(client.http.send_request)
    https = Account("https://127.0.0.1:1", credentials_provider=_NoCredentials()).mns_client
    assert https.is_https and hasattr(https.http.conn, "timeout")  # the socket timeout we set


class _NoCredentials:
    def get_credentials(self) -> Credentials:
        return Credentials("id", "secret")


def test_the_default_chains_error_text_is_what_we_summarise() -> None:
    # In a process whose environment has no key and no ECS lookup: the chain fails at once.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_")}
    env.update(ALIBABA_CLOUD_ECS_METADATA_DISABLED="true", HOME="/nonexistent")
    code = ("from alibabacloud_credentials.client import Client\n"
            "try:\n    Client().get_credential()\n"
            "except Exception as exc:\n    print(getattr(exc, 'message', None) or exc)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    tried = chain_failures(done.stdout.strip())
    assert "environment" in tried and "credentials file" in tried, done.stdout
