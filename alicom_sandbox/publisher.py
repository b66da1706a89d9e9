"""Plays the Alicom platform: writes receipts into the sandbox's MNS queues.

It uses the official MNS SDK with the root AccessKey, as Alibaba itself would, and
`BatchSendMessage` with up to 16 messages per request. Each stored body is the base64 text of
the UTF-8 JSON receipt, exactly what the SDK's default `base64encode` would store; the
publisher encodes the text itself and switches the SDK's own encoding off, so that malformed
bodies (bad base64, non-UTF-8 bytes) can travel too.

`alicom-receipts sandbox publish --type SmsReport --count N [--rate R/s]
[--duplicate-rate 0.05] [--malformed N] [--endpoint URL]` runs `main`.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mns.account import Account
from mns.mns_exception import (
    MNSClientNetworkException,
    MNSExceptionBase,
    MNSServerException,
)
from mns.queue import Message

from alicom_sandbox.context import (
    ALICOM_ACCOUNT_ID,
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    queue_name_for,
)
from alicom_sandbox.fakes import (
    KINDS,
    PUBLISHABLE_MALFORMED,
    FakeBody,
    FakeReceipts,
    message_type_of_kind,
)
from alicom_sandbox.mns_limits import MAX_BATCH


class PublishError(Exception):
    """A publish failed; the sandbox package keeps its own errors (it imports nothing from
    `consumer`)."""


class AuthError(PublishError):
    """The MNS service refused the credentials."""


class PermanentError(PublishError):
    """Retrying the same publish will not help (unknown queue, rejected request)."""


class TransientError(PublishError):
    """The publish may work when tried again (network, 5xx)."""


DEFAULT_ENDPOINT = "http://127.0.0.1:8765"
_AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_PERMANENT_CODES = frozenset({"QueueNotExist", "InvalidArgument", "MessageBodyLengthExceeded"})


@dataclass(frozen=True)
class PublishedMessage:
    """One message put on the queue, in queue order (`position` 0 is sent first)."""

    position: int
    message_id: str  # the MessageId MNS assigned
    body: str  # the stored body text
    body_md5: str  # MessageBodyMD5 as MNS reported it
    kind: str
    obj: Any  # the JSON value inside (None for non-JSON malformed bodies)
    duplicate_of: int | None = None  # position of the original this repeats
    malformed: str | None = None  # the DecodeError reason a decoder should give


@dataclass(frozen=True)
class PublishReport:
    """What one `publish` call put on the queue."""

    kind: str
    queue: str
    seed: int
    messages: tuple[PublishedMessage, ...]
    elapsed_s: float

    @property
    def originals(self) -> list[PublishedMessage]:
        return [m for m in self.messages if m.duplicate_of is None and m.malformed is None]

    @property
    def duplicates(self) -> list[PublishedMessage]:
        return [m for m in self.messages if m.duplicate_of is not None]

    @property
    def malformed(self) -> list[PublishedMessage]:
        return [m for m in self.messages if m.malformed is not None]

    def summary(self) -> str:
        rate = len(self.messages) / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"published {len(self.messages)} {self.kind} messages to {self.queue}: "
            f"{len(self.originals)} receipts, {len(self.duplicates)} duplicates, "
            f"{len(self.malformed)} malformed in {self.elapsed_s:.2f} s "
            f"({rate:.0f} msg/s, seed {self.seed})"
        )


@dataclass(frozen=True)
class _Slot:
    """One planned message: a fresh receipt, a repeat of an earlier one, or a broken body."""

    sort_key: float
    fresh: bool = False
    duplicate_of_fresh: int | None = None  # index among the fresh receipts
    malformed: str | None = None


def _plan(count: int, duplicates: int, malformed: int, rng: random.Random) -> list[_Slot]:
    """The order of the messages: each duplicate lands after its original, broken bodies
    anywhere."""
    fresh = count - duplicates - malformed
    if fresh < 0 or (duplicates and fresh == 0):
        raise ValueError(
            f"count {count} leaves no room for {duplicates} duplicates and {malformed} malformed"
        )
    slots = [_Slot(float(i), fresh=True) for i in range(fresh)]
    for _ in range(duplicates):
        original = rng.randrange(fresh)
        slots.append(_Slot(rng.uniform(original + 0.01, fresh), duplicate_of_fresh=original))
    for i in range(malformed):
        variant = PUBLISHABLE_MALFORMED[i % len(PUBLISHABLE_MALFORMED)]
        slots.append(_Slot(rng.uniform(0.0, max(fresh, 1)), malformed=variant))
    slots.sort(key=lambda s: s.sort_key)
    return slots


def _translate(exc: MNSExceptionBase, queue: str) -> PublishError:
    code = getattr(exc, "type", "")
    if isinstance(exc, MNSServerException):
        text = f"BatchSendMessage to {queue} refused: {code} {exc.message}"
        if code in _AUTH_CODES:
            return AuthError(text)
        if code in _PERMANENT_CODES:
            return PermanentError(text)
        return TransientError(text)
    if isinstance(exc, MNSClientNetworkException):
        # The SDK's text is the bare type ("NetWorkException"); its message has the cause.
        cause = " ".join(str(getattr(exc, "message", "") or "").split())[:160]
        return TransientError(f"BatchSendMessage to {queue} failed: cannot reach the sandbox "
                              f"({cause or code}): is `alicom-receipts sandbox` running at "
                              f"--endpoint?")
    return PermanentError(f"BatchSendMessage to {queue} rejected by the SDK: {code}")


class Publisher:
    """Writes receipts into the sandbox with the platform's root AccessKey.

    Holds one MNS `Account` (one HTTP connection): use one Publisher per thread.
    """

    def __init__(
        self,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        *,
        account_id: str = ALICOM_ACCOUNT_ID,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint
        self.account_id = account_id
        self._account = Account(endpoint, access_key_id, access_key_secret)
        self._sleep = sleep

    def queue_name(self, message_type: str) -> str:
        return queue_name_for(self.account_id, message_type)

    def send_bodies(self, queue: str, bodies: Sequence[str]) -> list[tuple[str, str]]:
        """Sends stored-form bodies in batches of 16; (MessageId, MessageBodyMD5) per body.

        Raises AuthError / PermanentError / TransientError (from the SDK's exception) on the
        first refused batch; earlier batches stay sent.
        """
        q = self._account.get_queue(queue)
        q.set_encoding(False)  # bodies are already in their stored (base64) form
        sent: list[tuple[str, str]] = []
        for start in range(0, len(bodies), MAX_BATCH):
            batch = [Message(body) for body in bodies[start : start + MAX_BATCH]]
            try:
                answers = q.batch_send_message(batch)
            except MNSExceptionBase as exc:
                raise _translate(exc, queue) from exc
            sent.extend((a.message_id, a.message_body_md5) for a in answers)
        return sent

    def publish(
        self,
        kind: str,
        count: int,
        *,
        duplicate_rate: float = 0.0,
        malformed: int = 0,
        rate_per_s: float | None = None,
        seed: int | None = None,
        start_epoch_s: float | None = None,
    ) -> PublishReport:
        """Puts `count` messages on the queue of `kind` (a MessageType, or "SmsReport-intl").

        Of them, `round(count * duplicate_rate)` repeat an earlier body (same text, so a new
        MessageId), `malformed` are broken bodies (variants cycled in `PUBLISHABLE_MALFORMED`
        order), the rest are fresh receipts. `rate_per_s` paces the sending; `seed` makes
        the bodies and the order reproducible (with `start_epoch_s`, default now).
        """
        if seed is None:
            seed = random.SystemRandom().randrange(2**31)
        rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
        fakes = FakeReceipts(seed, start_epoch_s=time.time() if start_epoch_s is None
                             else start_epoch_s)
        plan = _plan(count, round(count * duplicate_rate), malformed, rng)
        bodies = self._bodies(kind, plan, fakes)
        queue = self.queue_name(message_type_of_kind(kind))
        began = time.monotonic()
        answers = self._send_paced(queue, [b.body for b, _ in bodies], rate_per_s, began)
        elapsed = time.monotonic() - began
        messages = tuple(
            PublishedMessage(
                position=i,
                message_id=message_id,
                body=fake.body,
                body_md5=md5,
                kind=kind,
                obj=fake.obj,
                duplicate_of=original,
                malformed=fake.malformed,
            )
            for i, ((fake, original), (message_id, md5)) in enumerate(
                zip(bodies, answers, strict=True)
            )
        )
        return PublishReport(kind, queue, seed, messages, elapsed)

    def close(self) -> None:
        """Closes the SDK's HTTP connection."""
        self._account.mns_client.close_connection()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _bodies(
        kind: str, plan: Sequence[_Slot], fakes: FakeReceipts
    ) -> list[tuple[FakeBody, int | None]]:
        """(body, position of the original for a duplicate) per planned message."""
        fresh_position: dict[int, int] = {}
        fresh_bodies: list[FakeBody] = []
        out: list[tuple[FakeBody, int | None]] = []
        for position, slot in enumerate(plan):
            if slot.fresh:
                fresh_position[len(fresh_bodies)] = position
                fresh_bodies.append(fakes.body(kind))
                out.append((fresh_bodies[-1], None))
            elif slot.duplicate_of_fresh is not None:
                index = slot.duplicate_of_fresh
                out.append((fresh_bodies[index], fresh_position[index]))
            else:
                out.append((fakes.malformed(kind, slot.malformed or "not_json"), None))
        return out

    def _send_paced(
        self, queue: str, bodies: Sequence[str], rate_per_s: float | None, began: float
    ) -> list[tuple[str, str]]:
        if not rate_per_s:
            return self.send_bodies(queue, bodies)
        # About five requests a second at low rates, full batches at high ones.
        batch = max(1, min(MAX_BATCH, int(rate_per_s / 5)))
        answers: list[tuple[str, str]] = []
        for start in range(0, len(bodies), batch):
            wait_s = began + start / rate_per_s - time.monotonic()
            if wait_s > 0:
                self._sleep(wait_s)
            answers.extend(self.send_bodies(queue, bodies[start : start + batch]))
        return answers


def _rate(text: str) -> float:
    """`50`, `50/s` -> 50.0 messages per second."""
    try:
        value = float(text.removesuffix("/s"))
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of messages per second, e.g. 200 or 200/s, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alicom-receipts sandbox publish",
        description="Publish fake Alicom receipts into the sandbox's MNS queues, as the "
        "platform would. AccessKey from ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET (sandbox default).",
    )
    p.add_argument("--type", dest="kind", default="SmsReport", choices=KINDS,
                   help="the message type, i.e. the queue (default SmsReport)")
    p.add_argument("--count", type=_count, required=True,
                   help="messages to publish in all, platform duplicates and malformed bodies "
                        "included")
    p.add_argument("--rate", type=_rate, default=None,
                   help="messages per second, e.g. 200/s (default: as fast as it goes)")
    p.add_argument("--duplicate-rate", type=_share, default=0.0,
                   help="share of the messages that repeat an earlier receipt with a new "
                        "MessageId, as the platform does (0-1, default 0)")
    p.add_argument("--malformed", type=int, default=0,
                   help="how many of the messages are bodies no receipt can be made of")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                   help=f"the sandbox's address (default {DEFAULT_ENDPOINT})")
    p.add_argument("--account-id", default=ALICOM_ACCOUNT_ID,
                   help="the account id in the queue names (default: the sandbox's)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the random choices, for a repeatable run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: publishes, prints a one-line summary, returns the exit status."""
    args = _parser().parse_args(argv)
    key_id = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY_ID)
    secret = os.environ.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET", DEFAULT_ACCESS_KEY_SECRET)
    try:
        with Publisher(args.endpoint, key_id, secret, account_id=args.account_id) as pub:
            report = pub.publish(
                args.kind,
                args.count,
                duplicate_rate=args.duplicate_rate,
                malformed=args.malformed,
                rate_per_s=args.rate,
                seed=args.seed,
            )
    except (PublishError, ValueError) as exc:
        print(f"publish failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
