"""The pre-queue: nobody admitted before opens_at, a committed seed revealed after it, the
cohort admitted in exactly the order anyone can recompute, later arrivals behind it, one
draw whatever runs it, and a uniform draw (a chi-square test)."""

from __future__ import annotations

import asyncio
import hashlib
import random
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from activator.admission import Admitter
from tests.helpers import (
    RPC_TIMEOUT,
    System,
    configure,
    eventually,
    issue,
    queue_status,
    schedule_row,
    token_status,
)
from waiting.v1 import (
    queue_status_service_pb2,
    schedule_service_pb2,
    token_pb2,
)
from waiting_core import prequeue
from waiting_core.database import Database
from waiting_core.events import Topics
from waiting_core.outbox import OutboxRelay
from waiting_core.signing_keys import SigningKeys, key_config

PENDING = token_pb2.TOKEN_STATUS_PENDING
ACTIVE = token_pb2.TOKEN_STATUS_ACTIVE
SHUFFLED = schedule_service_pb2.PREQUEUE_ORDER_SHUFFLED
FIFO = schedule_service_pb2.PREQUEUE_ORDER_FIFO


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def _schedule(system: System, schedule_id: int) -> schedule_service_pb2.Schedule:
    reply = await system.schedules.GetSchedule(
        schedule_service_pb2.GetScheduleRequest(schedule_id=schedule_id), timeout=RPC_TIMEOUT
    )
    return reply.schedule


async def _open_in(
    system: System, schedule_id: int, seconds: float, order: int = SHUFFLED, capacity: int = 3
) -> datetime:
    opens_at = datetime.now(UTC) + timedelta(seconds=seconds)
    await configure(
        system,
        schedule_id,
        capacity=capacity,
        opens_at=_stamp(opens_at),
        prequeue_order=order,
    )
    return opens_at


async def _upsert_code(system: System, schedule: schedule_service_pb2.Schedule) -> grpc.StatusCode:
    try:
        await system.schedules.UpsertSchedule(
            schedule_service_pb2.UpsertScheduleRequest(schedule=schedule), timeout=RPC_TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _wait_opened(opens_at: datetime) -> None:
    await asyncio.sleep(max(0.0, (opens_at - datetime.now(UTC)).total_seconds()))


async def _line(system: System, token_ids: list[str]) -> dict[str, token_pb2.Token]:
    return {token_id: await token_status(system, token_id) for token_id in token_ids}


async def test_nobody_is_admitted_before_the_opening_then_the_drawn_order_holds(
    system: System, schedule_id: int
) -> None:
    opens_at = await _open_in(system, schedule_id, 4.0)
    published = await _schedule(system, schedule_id)
    assert len(published.prequeue_commitment) == 64
    assert published.prequeue_seed == ""

    cohort = [(await issue(system, f"early-{i}", schedule_id)).token_id for i in range(8)]
    views = await _line(system, cohort)
    status = await system.queue.GetTokenStatus(
        queue_status_service_pb2.GetTokenStatusRequest(token_id=cohort[0]), timeout=RPC_TIMEOUT
    )
    assert status.in_prequeue
    assert status.opens_at.ToDatetime(tzinfo=UTC) == opens_at
    assert not status.estimate_known
    assert all(v.status == PENDING and v.position == 0 for v in views.values())
    assert (await queue_status(system, schedule_id)).active_count == 0

    await _wait_opened(opens_at)

    async def admitted() -> bool:
        return (await queue_status(system, schedule_id)).active_count == 3

    await eventually(admitted)

    async def drawn() -> bool:
        return (await _schedule(system, schedule_id)).prequeue_seed != ""

    await eventually(drawn)
    late = [(await issue(system, f"late-{i}", schedule_id)).token_id for i in range(2)]

    revealed = await _schedule(system, schedule_id)
    seed = bytes.fromhex(revealed.prequeue_seed)
    assert hashlib.sha256(seed).hexdigest() == published.prequeue_commitment
    assert revealed.prequeue_commitment == published.prequeue_commitment
    assert revealed.HasField("drawn_at")

    expected = prequeue.drawn_order(seed, cohort)  # what anyone can recompute
    views = await _line(system, cohort + late)
    assert [t for t in expected if views[t].status == ACTIVE] == expected[:3]
    assert [views[t].position for t in expected[3:]] == [1, 2, 3, 4, 5]
    assert [views[t].position for t in late] == [6, 7]
    status = await system.queue.GetTokenStatus(
        queue_status_service_pb2.GetTokenStatusRequest(token_id=late[0]), timeout=RPC_TIMEOUT
    )
    assert not status.in_prequeue

    # After the opening neither the time nor the order can change.
    moved = schedule_service_pb2.Schedule(
        schedule_id=schedule_id, opens_at=_stamp(datetime.now(UTC) + timedelta(hours=1))
    )
    reordered = schedule_service_pb2.Schedule(schedule_id=schedule_id, prequeue_order=FIFO)
    assert await _upsert_code(system, moved) == grpc.StatusCode.FAILED_PRECONDITION
    assert await _upsert_code(system, reordered) == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_fifo_prequeue_keeps_issue_order_and_shows_positions(
    system: System, schedule_id: int
) -> None:
    opens_at = await _open_in(system, schedule_id, 3.0, order=FIFO, capacity=2)
    assert (await _schedule(system, schedule_id)).prequeue_commitment == ""
    cohort = [(await issue(system, f"fifo-{i}", schedule_id)).token_id for i in range(5)]
    views = await _line(system, cohort)
    assert [views[t].position for t in cohort] == [1, 2, 3, 4, 5]

    await _wait_opened(opens_at)

    async def admitted() -> bool:
        return (await queue_status(system, schedule_id)).active_count == 2

    await eventually(admitted)
    views = await _line(system, cohort)
    assert [views[t].status for t in cohort[:2]] == [ACTIVE, ACTIVE]
    assert [views[t].position for t in cohort[2:]] == [1, 2, 3]


async def test_a_watch_stays_open_through_the_opening(system: System, schedule_id: int) -> None:
    opens_at = await _open_in(system, schedule_id, 3.0, capacity=1)
    await issue(system, "first", schedule_id)
    second = await issue(system, "second", schedule_id)
    stream = system.queue.WatchToken(
        queue_status_service_pb2.WatchTokenRequest(token_id=second.token_id), timeout=30
    )
    views = []
    async for reply in stream:
        views.append(reply)
        if not reply.in_prequeue:
            break
    stream.cancel()

    assert views[0].in_prequeue
    assert views[0].opens_at.ToDatetime(tzinfo=UTC) == opens_at
    assert views[0].token.position == 0
    assert datetime.now(UTC) >= opens_at
    opened = views[-1].token
    assert (opened.status, opened.position) in ((ACTIVE, 0), (PENDING, 1))


async def test_opens_at_is_checked(system: System, new_schedule_id: object) -> None:
    assert callable(new_schedule_id)
    past = schedule_service_pb2.Schedule(
        schedule_id=new_schedule_id(), opens_at=_stamp(datetime.now(UTC) - timedelta(seconds=5))
    )
    assert await _upsert_code(system, past) == grpc.StatusCode.INVALID_ARGUMENT

    already_open = new_schedule_id()
    await configure(system, already_open, capacity=5)
    await issue(system, "someone", already_open)

    async def admitted() -> bool:
        return (await queue_status(system, already_open)).active_count == 1

    await eventually(admitted)
    late_opening = schedule_service_pb2.Schedule(
        schedule_id=already_open, opens_at=_stamp(datetime.now(UTC) + timedelta(minutes=5))
    )
    assert await _upsert_code(system, late_opening) == grpc.StatusCode.FAILED_PRECONDITION


async def test_moving_the_opening_keeps_the_commitment(system: System, schedule_id: int) -> None:
    await _open_in(system, schedule_id, 600.0)
    first = (await _schedule(system, schedule_id)).prequeue_commitment
    await _open_in(system, schedule_id, 900.0)
    moved = await _schedule(system, schedule_id)
    assert moved.prequeue_commitment == first
    assert moved.opens_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC) + timedelta(seconds=800)


async def test_many_activators_at_the_opening_draw_once(system: System, schedule_id: int) -> None:
    opens_at = await _open_in(system, schedule_id, 3.0, capacity=1)
    cohort = [(await issue(system, f"race-{i}", schedule_id)).token_id for i in range(20)]
    settings = system.activator_settings
    async with Database(settings.database_url) as database:
        before = await schedule_row(database, schedule_id)
        topics = Topics(
            origin="activator", waiting=settings.waiting_topic, events=settings.events_topic
        )
        relay = OutboxRelay(  # never started: the system's relay publishes what it commits
            database, settings.kafka_bootstrap, topics=topics, partitions=settings.topic_partitions
        )
        admitters = [
            Admitter(relay, topics, SigningKeys(database, key_config(settings))) for _ in range(6)
        ]
        await _wait_opened(opens_at)
        await asyncio.gather(*(admitter.settle(schedule_id) for admitter in admitters))
        after = await schedule_row(database, schedule_id)

    # One admitted by draw key at the opening, then the other 19 renumbered, once.
    assert after.drawn_at is not None
    assert after.head_seq == before.last_seq
    assert after.last_seq == before.last_seq + len(cohort) - 1
    seed = bytes.fromhex((await _schedule(system, schedule_id)).prequeue_seed)
    expected = prequeue.drawn_order(seed, cohort)
    views = await _line(system, cohort)
    assert views[expected[0]].status == ACTIVE
    assert [views[t].position for t in expected[1:]] == list(range(1, len(cohort)))


# --- the draw is uniform -----------------------------------------------------------------

COHORT = 8
DRAWS = 10_000


def _chi_square_critical(degrees: int, z: float = 3.0902) -> float:
    """The chi-square quantile for p = 0.001 (z of 0.999), by Wilson-Hilferty."""
    k = 2 / (9 * degrees)
    return float(degrees * (1 - k + z * k**0.5) ** 3)


def _placement_chi_square(order: object) -> float:
    """Chi-square of arrival slot against drawn place over many seeded draws."""
    rng = random.Random(20261126)  # fixed: the test is repeatable
    counts = [[0] * COHORT for _ in range(COHORT)]
    for _ in range(DRAWS):
        arrivals = [rng.randbytes(32).hex()[:43] for _ in range(COHORT)]
        seed = rng.randbytes(prequeue.SEED_BYTES)
        drawn = order(seed, arrivals)  # type: ignore[operator]
        for slot, token_id in enumerate(arrivals):
            counts[slot][drawn.index(token_id)] += 1
    expected = DRAWS / COHORT
    return sum((n - expected) ** 2 / expected for row in counts for n in row)


def test_arrival_does_not_predict_place_in_the_draw() -> None:
    critical = _chi_square_critical((COHORT - 1) ** 2)
    assert _placement_chi_square(prequeue.drawn_order) < critical
    # The test can tell: issue order (arrival = place) fails it by far.
    assert _placement_chi_square(lambda seed, ids: list(ids)) > critical * 10


def test_only_a_shuffled_cohort_gets_draw_keys() -> None:
    opens_at = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    seed = b"s" * prequeue.SEED_BYTES
    early, late = opens_at - timedelta(seconds=1), opens_at
    shuffled, fifo = prequeue.PrequeueOrder.SHUFFLED, prequeue.PrequeueOrder.FIFO
    assert prequeue.cohort_key(opens_at, seed, shuffled, "t", early) == prequeue.draw_key(seed, "t")
    assert prequeue.cohort_key(opens_at, seed, shuffled, "t", late) is None
    assert prequeue.cohort_key(opens_at, seed, fifo, "t", early) is None
    assert prequeue.cohort_key(None, seed, shuffled, "t", early) is None
