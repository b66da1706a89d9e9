"""A push body: the platform's JSON array of receipts, checked and split into elements.

Kept apart from the server (consumer.sources.push.server), which runs `parse_push_body` off
its event loop.
"""

from __future__ import annotations

import json
from typing import Any

from consumer.pipeline.decode import reject_constant


class PushBodyError(ValueError):
    """The body is not a JSON array of objects; the message says why (never echoes it)."""


class TooManyReceiptsError(PushBodyError):
    """The array holds more receipts than one push may (`PushSettings.max_elements`)."""


def parse_push_body(body: bytes, max_elements: int | None = None) -> list[str]:
    """The elements of a push body, each re-serialised as compact JSON text.

    Raises PushBodyError unless the body is UTF-8 JSON (strict: no NaN/Infinity) holding an
    array of objects, TooManyReceiptsError when it holds more than `max_elements`. Element
    contents are not checked here: a receipt that lacks a field is stored and dead-lettered
    by the worker, so one bad element never blocks its neighbours. CPU-bound (a 1 MB body of
    tiny elements takes tens of ms): the server runs it off its event loop.
    """
    try:
        doc = json.loads(body.decode("utf-8-sig"), parse_constant=reject_constant)
    except UnicodeDecodeError as exc:
        raise PushBodyError("the body is not UTF-8 (invalid byte at offset %d)"
                            % exc.start) from exc
    except RecursionError as exc:
        raise PushBodyError("the body is not valid JSON: nested too deeply") from exc
    except ValueError as exc:
        raise PushBodyError("the body is not valid JSON: %s" % exc) from exc
    if not isinstance(doc, list):
        raise PushBodyError("expected a JSON array of receipts, got a JSON %s"
                            % type(doc).__name__)
    if max_elements is not None and len(doc) > max_elements:
        raise TooManyReceiptsError("the body holds %d receipts; at most %d are taken per push"
                              % (len(doc), max_elements))
    for index, element in enumerate(doc):
        if not isinstance(element, dict):
            raise PushBodyError("element %d of the array is a JSON %s, expected an object"
                                % (index, type(element).__name__))
    return [_compact(element) for element in doc]


def _compact(element: dict[str, Any]) -> str:
    text = json.dumps(element, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate escape: kept as \\u escapes so it can be stored, and the worker's
        # decoder dead-letters it with the reason instead of this server refusing the batch.
        return json.dumps(element, separators=(",", ":"))
    return text
