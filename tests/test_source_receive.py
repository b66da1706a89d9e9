"""The worker's receive path reads BatchReceiveMessage answers as the SDK's decoder does.

`consumer.sources.mns.queue.parse_batch_receive` replaces the SDK's minidom decoder on the hot
path; these
tests hold it to the SDK's own reading of the same documents, and run `MnsQueueClient.receive`
against the sandbox through the SDK's request, signing and error handling.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from xml.etree.ElementTree import canonicalize

import pytest
from mns.auth import StaticCredentialsProvider
from mns.mns_exception import MNSClientNetworkException
from mns.mns_xml_handler import BatchRecvMessageDecoder, ReceiptHandlesEncoder

from alicom_sandbox.fakes import FakeReceipts
from alicom_sandbox.publisher import Publisher
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from consumer.errors import PermanentError, TransientError
from consumer.sources.mns.queue import (
    Delivery,
    MnsQueueClient,
    encode_receipt_handles,
    parse_batch_receive,
)

NS = "http://mns.aliyuncs.com/doc/v1/"


def _message(i: int, body: str, md5: str, extra: str = "") -> str:
    return (
        "<Message>\n  <MessageId>ID-%d</MessageId>\n  <ReceiptHandle>RH-%d-x</ReceiptHandle>\n"
        "  <MessageBodyMD5>%s</MessageBodyMD5>\n  <MessageBody>%s</MessageBody>\n"
        "  <EnqueueTime>%d</EnqueueTime>\n  <NextVisibleTime>%d</NextVisibleTime>\n"
        "  <FirstDequeueTime>%d</FirstDequeueTime>\n  <DequeueCount>%d</DequeueCount>\n"
        "  <Priority>8</Priority>%s\n</Message>\n"
        % (i, i, md5, body, 1700000000000 + i, 1700000060000 + i, 1700000000500 + i, i % 5 + 1,
           extra))


def _document(messages: list[str]) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Messages xmlns="%s">\n%s</Messages>'
            % (NS, "".join(messages))).encode("utf-8")


def _sdk(xml_data: bytes, queue: str) -> list[Delivery]:
    return [Delivery(queue, m.message_id, m.receipt_handle, m.message_body, m.message_body_md5,
                     m.dequeue_count, m.enqueue_time, m.first_dequeue_time, m.next_visible_time)
            for m in BatchRecvMessageDecoder.decode(xml_data, False)]


def test_reads_a_batch_as_the_sdk_decoder_does() -> None:
    fakes = FakeReceipts(3)
    bodies = [fakes.body("SmsReport") for _ in range(16)]
    extra = "<UserProperties><PropertyValue><Name>k</Name><Value>v</Value></PropertyValue>" \
            "</UserProperties><MessageGroupId>g</MessageGroupId>"
    doc = _document([_message(i, b.body, b.body_md5, extra if i % 2 else "")
                     for i, b in enumerate(bodies)])
    ours = parse_batch_receive(doc, "Q")
    assert ours == _sdk(doc, "Q")
    assert [d.body for d in ours] == [b.body for b in bodies]


def test_a_batch_without_the_mns_namespace_is_read_too() -> None:
    fakes = FakeReceipts(4)
    doc = _document([_message(i, fakes.body("SmsReport").body, "M") for i in range(3)])
    plain = doc.replace(b' xmlns="%s"' % NS.encode(), b"")

    ours = parse_batch_receive(plain, "Q")

    assert ours == _sdk(plain, "Q") == parse_batch_receive(doc, "Q")
    assert len(ours) == 3


def test_an_empty_field_is_a_damaged_answer() -> None:
    doc = _document([_message(1, "b", "m").replace("<MessageId>ID-1</MessageId>",
                                                   "<MessageId></MessageId>")])
    with pytest.raises(TransientError, match="RespDataDamaged"):
        parse_batch_receive(doc, "Q")


def test_text_with_entities_and_non_ascii_is_read_whole() -> None:
    doc = _document([_message(1, "a&amp;b&lt;c&gt;d\u00e9\u4e2d", "MD5")])
    (ours,) = parse_batch_receive(doc, "Q")
    assert ours == _sdk(doc, "Q")[0]
    assert ours.body == "a&b<c>d\u00e9\u4e2d"


@pytest.mark.parametrize("doc", [
    b"<Messages><Message>",                                     # cut short
    b'<?xml version="1.0"?><Error><Code>x</Code></Error>',      # not a Messages document
    _document([_message(1, "b", "m").replace("<MessageId>ID-1</MessageId>", "")]),
    _document([_message(1, "b", "m").replace("<DequeueCount>2<", "<DequeueCount>two<")]),
])
def test_a_damaged_answer_is_transient_as_with_the_sdk(doc: bytes) -> None:
    with pytest.raises(TransientError, match="RespDataDamaged"):
        parse_batch_receive(doc, "Q")
    with pytest.raises((MNSClientNetworkException, KeyError, ValueError)):
        _sdk(doc, "Q")


@pytest.mark.parametrize("handles", [
    [], ["1A812EC45E2BCDEC-1-1-abcdef"], ["a&b", "<c>", '"d"', "e'f", "\u00e9\u4e2d"],
    ["h-%d" % i for i in range(16)],
])
def test_delete_body_is_the_sdk_encoders(handles: list[str]) -> None:
    ours, sdks = encode_receipt_handles(handles), ReceiptHandlesEncoder.encode(handles)
    # The same XML document; byte for byte too, except that Python 3.13's minidom (which the
    # SDK's encoder uses) writes a quote in text as &quot;, where ours keeps it, as before.
    assert canonicalize(ours.decode()) == canonicalize(sdks.decode())
    if sys.version_info < (3, 13):
        assert ours == sdks


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


def _client(sandbox: SandboxHandle, queue: str) -> MnsQueueClient:
    provider = StaticCredentialsProvider(sandbox.access_key_id, sandbox.access_key_secret, "")
    return MnsQueueClient(sandbox.endpoint, queue, provider, socket_timeout_s=10)


def test_receive_from_the_sandbox_gets_what_was_sent(sandbox: SandboxHandle) -> None:
    name = "t-recv-%s" % uuid.uuid4().hex[:12]
    sandbox.create_queue(name)
    fakes = FakeReceipts(5)
    bodies = [fakes.body("SmsReport").body for _ in range(20)]
    with Publisher(sandbox.endpoint, sandbox.access_key_id, sandbox.access_key_secret) as pub:
        sent = dict(pub.send_bodies(name, bodies))
    client = _client(sandbox, name)
    try:
        got = client.receive(16, 1) + client.receive(16, 1)
        assert client.receive(16, 0) == []  # MessageNotExist: empty, not an error
        assert sorted(d.body for d in got) == sorted(bodies)
        assert {d.message_id: d.body_md5 for d in got} == sent
        assert all(d.queue == name and d.dequeue_count == 1 for d in got)
        assert client.delete([d.receipt_handle for d in got[:16]]) == []
        # A handle already used up comes back as a failed entry; the fresh one is deleted.
        failures = client.delete([got[0].receipt_handle, got[16].receipt_handle])
        assert [(f.receipt_handle, f.handle_is_stale) for f in failures] == [
            (got[0].receipt_handle, True)]
        assert sandbox.queue_state(name)["inactive"] == 3
    finally:
        client.close()


def test_receive_from_a_missing_queue_is_permanent(sandbox: SandboxHandle) -> None:
    client = _client(sandbox, "t-missing-%s" % uuid.uuid4().hex[:12])
    try:
        with pytest.raises(PermanentError, match="QueueNotExist"):
            client.receive(16, 0)
    finally:
        client.close()


def test_peek_counts_messages_and_leaves_them_receivable(sandbox: SandboxHandle) -> None:
    name = "t-peek-%s" % uuid.uuid4().hex[:12]
    sandbox.create_queue(name)
    client = _client(sandbox, name)
    try:
        assert client.peek(16) == 0  # MessageNotExist: empty, not an error
        with Publisher(sandbox.endpoint, sandbox.access_key_id,
                       sandbox.access_key_secret) as pub:
            pub.send_bodies(name, [FakeReceipts(6).body("SmsReport").body for _ in range(3)])
        assert client.peek(16) == 3
        assert len(client.receive(16, 1)) == 3  # peeking took nothing away
    finally:
        client.close()


def test_peek_at_a_missing_queue_is_permanent(sandbox: SandboxHandle) -> None:
    client = _client(sandbox, "t-missing-%s" % uuid.uuid4().hex[:12])
    try:
        with pytest.raises(PermanentError, match="QueueNotExist"):
            client.peek()
    finally:
        client.close()
