"""The in-memory queue engine on its own: bookkeeping under load and random operation mixes.

These drive `alicom_sandbox.engine.Queue` directly with explicit times, which lets them
cover thousands of messages and arbitrary interleavings quickly; the HTTP behaviour is
covered through the SDK in the other test_mns_* files.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alicom_sandbox.clock import Clock
from alicom_sandbox.engine import QueueEngine
from alicom_sandbox.mns_errors import MnsError
from alicom_sandbox.mns_limits import QueueAttributes
from alicom_sandbox.mns_queue import Queue, SendEntry

T0 = 1_700_000_000_000


def make_queue(**attrs: int) -> Queue:
    return Queue("q", QueueAttributes(**attrs), T0)  # type: ignore[arg-type]


def test_deleting_everything_leaves_no_index_growing() -> None:
    queue = make_queue(visibility_timeout_s=30)
    now = T0
    for _ in range(5000 // 16):
        for i in range(16):
            queue.send(SendEntry(f"m{i}"), now)
        for message in queue.receive(16, now):
            assert message.handle is not None
            queue.delete(message.handle, now)
        now += 1
    sizes = queue.index_sizes()
    assert sizes["messages"] == sizes["handles"] == 0
    # stale heap entries are compacted away once they outnumber live ones (plus a slack)
    assert max(sizes["visible"], sizes["timed"], sizes["by_age"]) <= 1024 + 16


def test_a_redelivered_message_keeps_its_place_before_newer_ones() -> None:
    queue = make_queue(visibility_timeout_s=1)
    queue.send(SendEntry("old"), T0)
    [first] = queue.receive(1, T0)
    queue.send(SendEntry("new"), T0 + 10)
    bodies = [m.body for m in queue.receive(16, T0 + 1000)]
    assert bodies == ["old", "new"]
    assert first.dequeue_count == 2


def test_a_handle_from_another_queue_is_message_not_exist() -> None:
    engine = QueueEngine(Clock())
    engine.create_queue("a", QueueAttributes())
    engine.create_queue("b", QueueAttributes())
    engine.queue("a").send(SendEntry("x"), T0)
    [message] = engine.queue("a").receive(1, T0)
    assert message.handle is not None
    with pytest.raises(MnsError) as caught:
        engine.queue("b").delete(message.handle, T0)
    assert caught.value.code == "MessageNotExist"


def test_a_long_poll_wakes_when_a_message_is_sent() -> None:
    async def scenario() -> list[str]:
        engine = QueueEngine(Clock())
        engine.create_queue("q", QueueAttributes())
        poll = asyncio.create_task(engine.receive("q", 16, 30))
        while engine.queue("q").waiter_count == 0:
            await asyncio.sleep(0)
        engine.queue("q").send(SendEntry("hello"), engine.clock.now_ms())
        return [m.body for m in await asyncio.wait_for(poll, 30)]

    assert asyncio.run(scenario()) == ["hello"]


def test_a_cancelled_long_poll_leaves_no_waiter_behind() -> None:
    async def scenario() -> int:
        engine = QueueEngine(Clock())
        engine.create_queue("q", QueueAttributes())
        poll = asyncio.create_task(engine.receive("q", 1, 30))
        while engine.queue("q").waiter_count == 0:
            await asyncio.sleep(0)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
        return engine.queue("q").waiter_count

    assert asyncio.run(scenario()) == 0


operation = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 3), st.integers(1, 16)),
    st.tuples(st.just("receive"), st.integers(1, 16), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("change"), st.integers(0, 50), st.integers(1, 5)),
    st.tuples(st.just("wait"), st.integers(0, 4000), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=60))
def test_counts_and_deliveries_stay_consistent_under_any_operation_mix(
    ops: list[tuple[str, int, int]],
) -> None:
    queue = make_queue(visibility_timeout_s=2)
    now = T0
    handles: list[str] = []
    sent = deleted = 0
    for name, a, b in ops:
        if name == "send":
            queue.send(SendEntry("x", delay_s=a, priority=b), now)
            sent += 1
        elif name == "receive":
            handles += [m.handle for m in queue.receive(a, now) if m.handle is not None]
        elif name in ("delete", "change") and handles:
            handle = handles.pop(a % len(handles))
            try:
                if name == "delete":
                    queue.delete(handle, now)
                    deleted += 1
                else:
                    handles.append(str(queue.change_visibility(handle, b, now).handle))
            except MnsError as err:
                assert err.code == "MessageNotExist"  # expired or superseded
        else:
            now += a
        active, inactive, delayed = queue.counts(now)
        assert active + inactive + delayed == sent - deleted == queue.index_sizes()["messages"]

    later = now + 10_000  # every delay and visibility timeout is over
    assert queue.counts(later) == (sent - deleted, 0, 0)
    assert len(queue.receive(sent + 1, later)) == sent - deleted
