"""MNS XML in and out: request bodies parsed with xml.etree, answers built from templates.

The answers are exactly what the official SDK's decoders (mns/mns_xml_handler.py) demand:
every `Message` carries the nine fields RecvMessageDecoder requires, errors carry the four
elements ErrorDecoder requires, and no list element is ever empty (ListQueueDecoder calls
`.strip()` on every element's text).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from xml.etree import ElementTree

from alicom_sandbox.mns_errors import MnsError
from alicom_sandbox.mns_queue import Queue, StoredMessage

XMLNS = "http://mns.aliyuncs.com/doc/v1/"
_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


def escape(text: str) -> str:
    """Escape XML text content (bodies are usually base64, so the fast path is common)."""
    if "&" in text or "<" in text or ">" in text:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text


def malformed_xml() -> MnsError:
    return MnsError(400, "MalformedXML", "The XML you provided was not well-formed.")


def schema_error(detail: str) -> MnsError:
    return MnsError(
        400,
        "InvalidArgument",
        f"The XML you provided did not validate against our published schema, cause by {detail}.",
    )


def parse(body: bytes, root: str | tuple[str, ...]) -> ElementTree.Element:
    """The root element of a request body, which must be (one of) `root`."""
    # xml.etree expands internal entities; a request never needs a DTD, so refusing one
    # defuses entity-expansion bombs without a third-party parser.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise malformed_xml()
    try:
        element = ElementTree.fromstring(body)  # noqa: S314 - DTDs are refused above
    except ElementTree.ParseError as exc:
        raise malformed_xml() from exc
    roots = (root,) if isinstance(root, str) else root
    if local_name(element.tag) not in roots:
        raise schema_error(local_name(element.tag))
    return element


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def fields(element: ElementTree.Element) -> dict[str, str]:
    """Child element name -> text ("" when empty) of a flat element."""
    return {local_name(child.tag): child.text or "" for child in element}


def children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    """Child elements called `name`, in the MNS namespace or in none."""
    tags = (name, "{" + XMLNS + "}" + name)
    return [child for child in element if child.tag in tags]


# --- answers ---------------------------------------------------------------------------

_RECEIVED = (
    "<Message>"
    "<MessageId>%s</MessageId>"
    "<ReceiptHandle>%s</ReceiptHandle>"
    "<MessageBodyMD5>%s</MessageBodyMD5>"
    "<MessageBody>%s</MessageBody>"
    "<EnqueueTime>%d</EnqueueTime>"
    "<NextVisibleTime>%d</NextVisibleTime>"
    "<FirstDequeueTime>%d</FirstDequeueTime>"
    "<DequeueCount>%d</DequeueCount>"
    "<Priority>%d</Priority>"
    "</Message>"
)
_PEEKED = (
    "<Message>"
    "<MessageId>%s</MessageId>"
    "<MessageBodyMD5>%s</MessageBodyMD5>"
    "<MessageBody>%s</MessageBody>"
    "<EnqueueTime>%d</EnqueueTime>"
    "<FirstDequeueTime>%d</FirstDequeueTime>"
    "<DequeueCount>%d</DequeueCount>"
    "<Priority>%d</Priority>"
    "</Message>"
)
_ROOT_MESSAGE = '<Message xmlns="' + XMLNS + '">'


def _received(m: StoredMessage) -> str:
    return _RECEIVED % (
        m.message_id,
        m.handle,
        m.body_md5,
        escape(m.body),
        m.enqueue_ms,
        m.next_visible_ms,
        m.first_dequeue_ms,
        m.dequeue_count,
        m.priority,
    )


def _peeked(m: StoredMessage) -> str:
    return _PEEKED % (
        m.message_id,
        m.body_md5,
        escape(m.body),
        m.enqueue_ms,
        m.first_dequeue_ms,
        m.dequeue_count,
        m.priority,
    )


def messages_xml(messages: Sequence[StoredMessage], *, batch: bool, peek: bool = False) -> str:
    """A ReceiveMessage / PeekMessage answer (one `Message`) or a batch one (`Messages`)."""
    render = _peeked if peek else _received
    if not batch:
        return _HEAD + _ROOT_MESSAGE + render(messages[0])[len("<Message>") :]
    return _HEAD + '<Messages xmlns="' + XMLNS + '">' + "".join(map(render, messages)) + (
        "</Messages>"
    )


def sent_xml(message: StoredMessage) -> str:
    """A SendMessage answer; a delayed message's receipt handle is included, as MNS does."""
    handle = "" if message.handle is None else f"<ReceiptHandle>{message.handle}</ReceiptHandle>"
    return (
        f"{_HEAD}{_ROOT_MESSAGE}<MessageId>{message.message_id}</MessageId>"
        f"<MessageBodyMD5>{message.body_md5}</MessageBodyMD5>{handle}</Message>"
    )


def batch_sent_xml(messages: Iterable[StoredMessage]) -> str:
    items = "".join(
        f"<Message><MessageId>{m.message_id}</MessageId>"
        f"<MessageBodyMD5>{m.body_md5}</MessageBodyMD5></Message>"
        for m in messages
    )
    return f'{_HEAD}<Messages xmlns="{XMLNS}">{items}</Messages>'


def change_visibility_xml(handle: str, next_visible_ms: int) -> str:
    return (
        f'{_HEAD}<ChangeVisibility xmlns="{XMLNS}"><ReceiptHandle>{handle}</ReceiptHandle>'
        f"<NextVisibleTime>{next_visible_ms}</NextVisibleTime></ChangeVisibility>"
    )


def _attributes_inner(queue: Queue, now_ms: int) -> str:
    a = queue.attributes
    active, inactive, delayed = queue.counts(now_ms)
    return (
        f"<QueueName>{queue.name}</QueueName>"
        f"<CreateTime>{queue.create_time_s}</CreateTime>"
        f"<LastModifyTime>{queue.last_modify_time_s}</LastModifyTime>"
        f"<VisibilityTimeout>{a.visibility_timeout_s}</VisibilityTimeout>"
        f"<MaximumMessageSize>{a.maximum_message_size_bytes}</MaximumMessageSize>"
        f"<MessageRetentionPeriod>{a.message_retention_s}</MessageRetentionPeriod>"
        f"<DelaySeconds>{a.delay_s}</DelaySeconds>"
        f"<PollingWaitSeconds>{a.polling_wait_s}</PollingWaitSeconds>"
        f"<ActiveMessages>{active}</ActiveMessages>"
        f"<InactiveMessages>{inactive}</InactiveMessages>"
        f"<DelayMessages>{delayed}</DelayMessages>"
        f"<LoggingEnabled>{'True' if a.logging_enabled else 'False'}</LoggingEnabled>"
    )


def queue_attributes_xml(queue: Queue, now_ms: int) -> str:
    return f'{_HEAD}<Queue xmlns="{XMLNS}">{_attributes_inner(queue, now_ms)}</Queue>'


def queue_list_xml(
    queues: Iterable[Queue], base_url: str, next_marker: str, *, with_meta: bool, now_ms: int
) -> str:
    items = []
    for queue in queues:
        meta = _attributes_inner(queue, now_ms) if with_meta else ""
        items.append(f"<Queue><QueueURL>{base_url}/queues/{queue.name}</QueueURL>{meta}</Queue>")
    marker = f"<NextMarker>{escape(next_marker)}</NextMarker>" if next_marker else ""
    return f'{_HEAD}<Queues xmlns="{XMLNS}">{"".join(items)}{marker}</Queues>'


def error_xml(code: str, message: str, request_id: str, host_id: str) -> str:
    return (
        f'{_HEAD}<Error xmlns="{XMLNS}"><Code>{code}</Code><Message>{escape(message)}</Message>'
        f"<RequestId>{request_id}</RequestId><HostId>{escape(host_id)}</HostId></Error>"
    )


def batch_delete_errors_xml(errors: Iterable[tuple[str, str, str]]) -> str:
    """The per-entry `<Errors>` answer BatchDeleteMessageDecoder parses: (handle, code, msg)."""
    items = "".join(
        f"<Error><ErrorCode>{code}</ErrorCode><ErrorMessage>{escape(message)}</ErrorMessage>"
        f"<ReceiptHandle>{escape(handle)}</ReceiptHandle></Error>"
        for handle, code, message in errors
    )
    return f'{_HEAD}<Errors xmlns="{XMLNS}">{items}</Errors>'
