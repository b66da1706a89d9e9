"""The Redis idempotency store follows its documented state machine (claim, complete,
release, extend), on both call paths, for any sequence of transitions (hypothesis)."""

from __future__ import annotations

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.pipeline.dedup import ClaimState, Completion, DedupSettings, RedisDedupStore

LONG_S = 60.0
WEEK_S = 7 * 24 * 3600.0

OWNERS = st.sampled_from(["A", "B"])
KEYS = st.lists(st.sampled_from(["k1", "k2", "k3"]), min_size=1, max_size=4)
OPERATIONS = st.lists(
    st.tuples(st.sampled_from(["claim", "complete", "release", "extend"]), KEYS, OWNERS),
    max_size=12,
)


class Model:
    """The documented state machine, leases never expiring: None | ("I", owner) | "C" |
    "R" (a bare release: absent to a claim or a completion, not to an extension)."""

    def __init__(self) -> None:
        self.state: dict[str, object] = {}

    def apply(self, operation: str, keys: list[str], owner: str) -> list[object]:
        results: list[object] = []
        seen: dict[str, object] = {}
        for key in keys:
            if key in seen and operation != "extend":
                results.append(
                    ClaimState.IN_PROGRESS if operation == "claim" else seen[key]
                )
                continue
            result = getattr(self, operation)(key, owner)
            seen[key] = result
            results.append(result)
        return results

    def claim(self, key: str, owner: str) -> ClaimState:
        current = self.state.get(key)
        if current in (None, "R", ("I", owner)):
            self.state[key] = ("I", owner)
            return ClaimState.CLAIMED
        return ClaimState.COMPLETED if current == "C" else ClaimState.IN_PROGRESS

    def complete(self, key: str, owner: str) -> Completion:
        if self.state.get(key) in (None, "R", ("I", owner)):
            self.state[key] = "C"
            return Completion.RECORDED
        return Completion.ALREADY_COMPLETED if self.state[key] == "C" else Completion.LOST

    def release(self, key: str, owner: str) -> bool:
        if self.state.get(key) == ("I", owner):
            self.state[key] = "R"
            return True
        return False

    def extend(self, key: str, owner: str) -> bool:
        if self.state.get(key) in (None, ("I", owner)):  # absent: a lapsed lease, taken back
            self.state[key] = ("I", owner)
            return True
        return False


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
@pytest.mark.parametrize("one_call", [True, False], ids=["one call per batch", "per key"])
def test_any_sequence_of_transitions_follows_the_state_machine(
    redis_client: redis.Redis, operations: list[tuple[str, list[str], str]], one_call: bool,
) -> None:
    redis_client.flushall()
    store = RedisDedupStore(redis_client, DedupSettings())
    store.one_call_per_batch = one_call
    model = Model()
    for operation, keys, owner in operations:
        if operation == "claim":
            actual: list[object] = list(store.claim(keys, owner, LONG_S))
        elif operation == "complete":
            actual = list(store.complete(keys, owner, WEEK_S))
        elif operation == "release":
            actual = list(store.release(keys, owner))
        else:
            actual = list(store.extend(keys, owner, LONG_S))
        assert actual == model.apply(operation, keys, owner), (operation, keys, owner)
