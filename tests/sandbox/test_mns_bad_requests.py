"""Requests the official SDK cannot produce, sent raw with http.client.

The SDK always builds well-formed XML, always signs, always sends `Date` and `x-mns-version`,
refuses empty receipt handles and visibility timeouts above 43200 before sending, and has no
way to send a wrong Content-MD5. The sandbox must still answer such requests as MNS does:
the right error code in the `<Error>` XML, never a 500 or a traceback. Requests here are
signed with `alicom_sandbox.signing` (checked against the documented vector in
test_mns_signing.py) unless the test is about the signature itself.
"""

from __future__ import annotations

import http.client
import time
from email.utils import formatdate
from urllib.parse import urlsplit
from xml.etree import ElementTree

import pytest
from mns.queue import Message, Queue

from alicom_sandbox.signing import content_md5_of, signature, string_to_sign
from alicom_sandbox.testing import SandboxHandle

NS = "{http://mns.aliyuncs.com/doc/v1/}"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def code(self) -> str:
        """The error code, after checking the error XML has all four elements MNS sends."""
        root = ElementTree.fromstring(self.body)
        assert root.tag == NS + "Error", self.body
        fields = {child.tag[len(NS) :]: child.text for child in root}
        assert set(fields) == {"Code", "Message", "RequestId", "HostId"}
        assert fields["RequestId"] == self.headers["x-mns-request-id"]
        return str(fields["Code"])


def raw_request(
    sandbox: SandboxHandle,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    drop: tuple[str, ...] = (),
    override: dict[str, str] | None = None,
) -> Answer:
    """A correctly signed MNS request, minus the headers in `drop`, plus `override`."""
    headers = {"x-mns-version": "2015-06-06", "date": formatdate(usegmt=True)}
    if body:
        headers["content-type"] = "text/xml;charset=UTF-8"
        headers["content-md5"] = content_md5_of(body)
    headers.update(override or {})
    text = string_to_sign(
        method,
        headers.get("content-md5", ""),
        headers.get("content-type", ""),
        headers.get("date", ""),
        headers,
        path,
    )
    headers["authorization"] = (
        f"MNS {sandbox.access_key_id}:{signature(sandbox.access_key_secret, text)}"
    )
    headers.update({k: v for k, v in (override or {}).items() if k == "authorization"})
    for name in drop:
        headers.pop(name, None)
    host = urlsplit(sandbox.endpoint).netloc
    connection = http.client.HTTPConnection(host, timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def messages_path(queue: Queue) -> str:
    return f"/queues/{queue.queue_name}/messages"


def test_malformed_xml_is_malformed_xml(queue: Queue, sandbox: SandboxHandle) -> None:
    answer = raw_request(sandbox, "POST", messages_path(queue), b"<Message><MessageBody>x")
    assert (answer.status, answer.code) == (400, "MalformedXML")


def test_xml_with_a_dtd_is_refused_before_any_entity_is_expanded(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        b"<Message><MessageBody>&b;</MessageBody></Message>"
    )
    answer = raw_request(sandbox, "POST", messages_path(queue), bomb)
    assert (answer.status, answer.code) == (400, "MalformedXML")


@pytest.mark.parametrize(
    "body",
    [b"<Queue><VisibilityTimeout>5</VisibilityTimeout></Queue>",
     b"<Message><Priority>3</Priority></Message>",
     b"<Message><MessageBody>x</MessageBody><Priority>high</Priority></Message>"],
    ids=["wrong-root", "no-body", "priority-not-a-number"],
)
def test_well_formed_xml_that_breaks_the_schema_is_invalid_argument(
    queue: Queue, sandbox: SandboxHandle, body: bytes
) -> None:
    answer = raw_request(sandbox, "POST", messages_path(queue), body)
    assert (answer.status, answer.code) == (400, "InvalidArgument")


def test_a_batch_delete_of_seventeen_handles_is_invalid_argument(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    handles = "".join(f"<ReceiptHandle>1-{i:X}-000000000000</ReceiptHandle>" for i in range(17))
    body = f"<ReceiptHandles>{handles}</ReceiptHandles>".encode()
    answer = raw_request(sandbox, "DELETE", messages_path(queue), body)
    assert (answer.status, answer.code) == (400, "InvalidArgument")


@pytest.mark.parametrize(
    ("method", "query"),
    [("DELETE", ""), ("DELETE", "?ReceiptHandle="), ("PUT", "?VisibilityTimeout=5")],
)
def test_a_missing_receipt_handle_is_missing_receipt_handle(
    queue: Queue, sandbox: SandboxHandle, method: str, query: str
) -> None:
    answer = raw_request(sandbox, method, messages_path(queue) + query)
    assert (answer.status, answer.code) == (400, "MissingReceiptHandle")


def test_a_batch_delete_with_an_empty_handle_is_missing_receipt_handle(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    body = b"<ReceiptHandles><ReceiptHandle></ReceiptHandle></ReceiptHandles>"
    answer = raw_request(sandbox, "DELETE", messages_path(queue), body)
    assert (answer.status, answer.code) == (400, "MissingReceiptHandle")


def test_change_visibility_without_a_timeout_is_missing_visibility_timeout(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.send_message(Message("x"))
    handle = queue.receive_message().receipt_handle
    answer = raw_request(sandbox, "PUT", f"{messages_path(queue)}?ReceiptHandle={handle}")
    assert (answer.status, answer.code) == (400, "MissingVisibilityTimeout")


def test_change_visibility_above_twelve_hours_is_invalid_argument(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    queue.send_message(Message("x"))
    handle = queue.receive_message().receipt_handle
    path = f"{messages_path(queue)}?ReceiptHandle={handle}&VisibilityTimeout=43201"
    answer = raw_request(sandbox, "PUT", path)
    assert (answer.status, answer.code) == (400, "InvalidArgument")


def test_a_url_encoded_receipt_handle_is_decoded(queue: Queue, sandbox: SandboxHandle) -> None:
    queue.send_message(Message("x"))
    handle = queue.receive_message().receipt_handle
    encoded = handle.replace("-", "%2D")  # as clients that URL-encode their handles send it
    answer = raw_request(sandbox, "DELETE", f"{messages_path(queue)}?ReceiptHandle={encoded}")
    assert answer.status == 204
    assert answer.headers["x-mns-request-id"]


@pytest.mark.parametrize("query", ["?numOfMessages=lots", "?waitseconds=-1", "?numOfMessages=0"])
def test_bad_receive_parameters_are_invalid_argument(
    queue: Queue, sandbox: SandboxHandle, query: str
) -> None:
    answer = raw_request(sandbox, "GET", messages_path(queue) + query)
    assert (answer.status, answer.code) == (400, "InvalidArgument")


@pytest.mark.parametrize(
    ("drop", "override", "status", "code"),
    [
        (("authorization",), {}, 400, "MissingAuthorizationHeader"),
        ((), {"authorization": "Bearer something"}, 400, "InvalidAuthorizationHeader"),
        ((), {"authorization": "MNS no-colon"}, 400, "InvalidAuthorizationHeader"),
        (("date",), {}, 400, "MissingDateHeader"),
        ((), {"date": "yesterday at noon"}, 400, "InvalidDateHeader"),
        ((), {"date": formatdate(time.time() - 3600, usegmt=True)}, 408, "TimeExpired"),
        (("x-mns-version",), {}, 400, "MissingVersionHeader"),
        ((), {"x-mns-version": "2014-07-08"}, 400, "InvalidVersionHeader"),
    ],
    ids=["no-auth", "not-mns-scheme", "no-colon", "no-date", "bad-date", "stale-date",
         "no-version", "old-version"],
)
def test_broken_common_headers_get_the_documented_codes(
    sandbox: SandboxHandle,
    drop: tuple[str, ...],
    override: dict[str, str],
    status: int,
    code: str,
) -> None:
    answer = raw_request(sandbox, "GET", "/queues", drop=drop, override=override)
    assert (answer.status, answer.code) == (status, code)


def test_a_tampered_request_is_signature_does_not_match(sandbox: SandboxHandle) -> None:
    # Signed for one prefix header value, sent with another.
    answer = raw_request(sandbox, "GET", "/queues", override={"x-mns-prefix": "A"})
    assert answer.status == 200
    tampered = raw_request(
        sandbox, "GET", "/queues",
        override={"x-mns-prefix": "A", "authorization": f"MNS {sandbox.access_key_id}:AAAA"},
    )
    assert (tampered.status, tampered.code) == (403, "SignatureDoesNotMatch")


def test_a_wrong_content_md5_is_invalid_digest(queue: Queue, sandbox: SandboxHandle) -> None:
    body = b"<Message><MessageBody>x</MessageBody></Message>"
    answer = raw_request(
        sandbox, "POST", messages_path(queue), body,
        override={"content-md5": content_md5_of(b"something else")},
    )
    assert (answer.status, answer.code) == (400, "InvalidDegist")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/topics"), ("POST", "/queues"), ("GET", "/queues/a/b/c"), ("PATCH", "/queues/q")],
)
def test_unknown_urls_are_invalid_request_url(
    sandbox: SandboxHandle, method: str, path: str
) -> None:
    answer = raw_request(sandbox, method, path)
    assert (answer.status, answer.code) == (400, "InvalidRequestURL")


def test_a_body_over_the_request_limit_is_invalid_argument(
    queue: Queue, sandbox: SandboxHandle
) -> None:
    body = b"<Message><MessageBody>" + b"x" * (2 * 1024 * 1024) + b"</MessageBody></Message>"
    answer = raw_request(sandbox, "POST", messages_path(queue), body)
    assert (answer.status, answer.code) == (400, "InvalidArgument")
