"""UpsertSchedule changes only what its update_mask names (AIP-134); GetSchedule reads back."""

from __future__ import annotations

import grpc
import pytest

from tests.helpers import RPC_TIMEOUT, System
from waiting.v1 import schedule_service_pb2 as ss


async def _upsert(system: System, schedule: ss.Schedule, *paths: str) -> ss.Schedule:
    request = ss.UpsertScheduleRequest(schedule=schedule)
    request.update_mask.paths.extend(paths)
    reply = await system.schedules.UpsertSchedule(request, timeout=RPC_TIMEOUT)
    return reply.schedule


async def _get(system: System, schedule_id: int) -> ss.Schedule:
    reply = await system.schedules.GetSchedule(
        ss.GetScheduleRequest(schedule_id=schedule_id), timeout=RPC_TIMEOUT
    )
    return reply.schedule


async def _configured(system: System, schedule_id: int) -> None:
    await _upsert(
        system,
        ss.Schedule(
            schedule_id=schedule_id,
            capacity=5,
            active_ttl_seconds=60,
            pending_ttl_seconds=30,
            admit_rate_per_second=2,
        ),
        "*",
    )


async def test_a_masked_update_keeps_the_other_settings(system: System, schedule_id: int) -> None:
    await _configured(system, schedule_id)

    written = await _upsert(
        system,
        ss.Schedule(schedule_id=schedule_id, admit_rate_per_second=10),
        "admit_rate_per_second",
    )

    assert written == await _get(system, schedule_id)
    assert (written.capacity, written.active_ttl_seconds, written.pending_ttl_seconds) == (
        5,
        60,
        30,
    )
    assert written.admit_rate_per_second == 10


async def test_an_empty_mask_writes_only_the_fields_the_request_sets(
    system: System, schedule_id: int
) -> None:
    await _configured(system, schedule_id)

    written = await _upsert(system, ss.Schedule(schedule_id=schedule_id, capacity=7))

    assert (written.capacity, written.active_ttl_seconds) == (7, 60)
    assert (written.pending_ttl_seconds, written.admit_rate_per_second) == (30, 2)


async def test_a_masked_field_left_unset_goes_back_to_its_default(
    system: System, schedule_id: int
) -> None:
    await _configured(system, schedule_id)

    written = await _upsert(
        system, ss.Schedule(schedule_id=schedule_id), "pending_ttl_seconds", "capacity"
    )

    assert (written.pending_ttl_seconds, written.capacity) == (0, 1000)
    assert (written.active_ttl_seconds, written.admit_rate_per_second) == (60, 2)


async def test_star_replaces_every_setting(system: System, schedule_id: int) -> None:
    await _configured(system, schedule_id)

    written = await _upsert(system, ss.Schedule(schedule_id=schedule_id, capacity=9), "*")

    assert written == ss.Schedule(
        schedule_id=schedule_id,
        capacity=9,
        active_ttl_seconds=600,
        pending_ttl_seconds=0,
        admit_rate_per_second=0,
        prequeue_order=ss.PREQUEUE_ORDER_SHUFFLED,  # the default, shown; no opens_at
    )


async def test_a_new_schedule_takes_defaults_for_what_the_mask_leaves_out(
    system: System, schedule_id: int
) -> None:
    written = await _upsert(
        system,
        ss.Schedule(schedule_id=schedule_id, capacity=3, admit_rate_per_second=4),
        "admit_rate_per_second",
    )

    assert (written.capacity, written.admit_rate_per_second) == (1000, 4)


@pytest.mark.parametrize(
    ("paths", "why"),
    [
        (("capacity", "colour"), "unknown path 'colour'"),
        (("schedule.capacity",), "unknown path"),
        (("*", "capacity"), '"*" must be the only path'),
    ],
)
async def test_a_bad_mask_is_invalid_argument_naming_update_mask(
    system: System, schedule_id: int, paths: tuple[str, ...], why: str
) -> None:
    await _configured(system, schedule_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _upsert(system, ss.Schedule(schedule_id=schedule_id, capacity=8), *paths)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("update_mask: ")
    assert why in (caught.value.details() or "")
    assert (await _get(system, schedule_id)).capacity == 5
