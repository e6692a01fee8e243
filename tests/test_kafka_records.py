"""What lands on the broker: CreateTokenEvents as protobuf, keyed by schedule, over partitions."""

from __future__ import annotations

from collections.abc import Callable

from activator.maintenance import partition_of
from tests.helpers import System, create_events, issue
from waiting.v1 import events_pb2


async def test_events_are_keyed_by_schedule_and_spread_over_partitions(
    system: System, new_schedule_id: Callable[[], int]
) -> None:
    schedule_ids = [new_schedule_id() for _ in range(12)]
    issued = {}
    for schedule_id in schedule_ids:
        for user in ("a", "b"):
            token = await issue(system, user, schedule_id)
            issued[token.token_id] = schedule_id

    records = await create_events(system, set(issued))

    partitions_by_key: dict[bytes, set[int]] = {}
    for record in records:
        event = events_pb2.CreateTokenEvent.FromString(record.value)
        assert record.key == str(issued[event.token_id]).encode()
        assert event.schedule_id == issued[event.token_id]
        assert dict(record.headers)["event-type"] == b"waiting.v1.CreateTokenEvent"
        partitions_by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions_by_key.values()), "a schedule split partitions"
    assert len(set().union(*partitions_by_key.values())) > 1, "all schedules on one partition"
    # The sweeper works out a schedule's partition itself: it must agree with the broker's.
    partitions = system.activator_settings.topic_partitions
    for key, (partition,) in partitions_by_key.items():
        assert partition_of(int(key), partitions) == partition, f"schedule {key!r}"
