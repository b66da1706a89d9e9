"""Unit checks of the MNS signature and of raw query parsing (no server needed)."""

from __future__ import annotations

from mns.auth import Credentials
from mns.mns_client import MNSClient

from alicom_sandbox.mns_api import parse_raw_query
from alicom_sandbox.signing import content_md5_of, signature, string_to_sign


def test_the_documented_signature_example_is_reproduced() -> None:
    text = string_to_sign(
        "GET", "", "", "Thu, 09 Jul 2015 03:01:34 GMT", {"x-mns-version": "2015-06-06"},
        "/MyQueue",
    )
    assert signature("TestAccessSecret", text) == "uwx3yeWoILzgmvesW0BQSgfM7b8="


def test_only_x_mns_headers_are_signed_sorted_by_name() -> None:
    text = string_to_sign(
        "PUT", "md5", "text/xml", "date",
        {"x-mns-version": "2015-06-06", "host": "h", "x-mns-prefix": "p", "security-token": "t"},
        "/queues/q?metaoverride=true",
    )
    assert text == (
        "PUT\nmd5\ntext/xml\ndate\nx-mns-prefix:p\nx-mns-version:2015-06-06\n"
        "/queues/q?metaoverride=true"
    )


def test_our_signature_equals_the_official_sdks_for_the_same_request() -> None:
    client = MNSClient("http://127.0.0.1:1", "id", "secret")
    headers = {
        "x-mns-version": "2015-06-06",
        "x-mns-user-request-id": "abc",
        "content-md5": "bWQ1",
        "content-type": "text/xml;charset=UTF-8",
        "date": "Mon, 01 Jan 2024 00:00:00 GMT",
        "host": "127.0.0.1:1",
    }
    resource = "/queues/q/messages?ReceiptHandle=1-A+b/c=&VisibilityTimeout=30"
    sdk = client.get_signature("PUT", headers, resource, Credentials("id", "secret"))
    text = string_to_sign(
        "PUT", headers["content-md5"], headers["content-type"], headers["date"], headers,
        resource,
    )
    assert sdk == f"MNS id:{signature('secret', text)}"


def test_content_md5_is_base64_of_the_hex_digest_as_the_python_sdk_sends_it() -> None:
    # base64("900150983cd24fb0d6963f7d28e17f72"), the hex MD5 of "abc"
    assert content_md5_of(b"abc") == "OTAwMTUwOTgzY2QyNGZiMGQ2OTYzZjdkMjhlMTdmNzI="


def test_the_raw_query_keeps_plus_signs_and_slashes_of_unencoded_handles() -> None:
    params = parse_raw_query("/queues/q/messages?ReceiptHandle=1-A+b/c==&VisibilityTimeout=30")
    assert params == {"ReceiptHandle": "1-A+b/c==", "VisibilityTimeout": "30"}


def test_the_raw_query_decodes_percent_escapes_but_not_plus() -> None:
    assert parse_raw_query("/p?ReceiptHandle=a%2Bb+c") == {"ReceiptHandle": "a+b+c"}
    assert parse_raw_query("/p") == {}
    assert parse_raw_query("/p?peekonly=true&&numOfMessages=3") == {
        "peekonly": "true",
        "numOfMessages": "3",
    }
