"""Bad input gets INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION naming the field (I6)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.helpers import RPC_TIMEOUT, System, issue
from waiting.v1 import queue_status_service_pb2 as qs
from waiting.v1 import schedule_service_pb2 as ss
from waiting.v1 import token_service_pb2 as ts

UNKNOWN_TOKEN = "A" * 32

Call = Callable[[System], Awaitable[Any]]


async def _expect(call: Awaitable[Any], code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert field in (caught.value.details() or "")


CASES: list[tuple[str, Call, grpc.StatusCode, str]] = [
    (
        "empty user_id",
        lambda s: s.tokens.IssueToken(
            ts.IssueTokenRequest(user_id="", schedule_id=1), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    ),
    (
        "blank user_id",
        lambda s: s.tokens.IssueToken(
            ts.IssueTokenRequest(user_id="   ", schedule_id=1), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    ),
    (
        "huge user_id",
        lambda s: s.tokens.IssueToken(
            ts.IssueTokenRequest(user_id="x" * 5000, schedule_id=1), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    ),
    (
        "control chars in user_id",
        lambda s: s.tokens.IssueToken(
            ts.IssueTokenRequest(user_id="a\x00b", schedule_id=1), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    ),
    (
        "zero schedule_id",
        lambda s: s.tokens.IssueToken(
            ts.IssueTokenRequest(user_id="u", schedule_id=0), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "schedule_id",
    ),
    (
        "negative schedule_id",
        lambda s: s.tokens.IssueToken(
            ts.IssueTokenRequest(user_id="u", schedule_id=-5), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "schedule_id",
    ),
    (
        "unknown token_id",
        lambda s: s.tokens.GetToken(
            ts.GetTokenRequest(token_id=UNKNOWN_TOKEN), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
        "token_id",
    ),
    (
        "malformed token_id",
        lambda s: s.tokens.GetToken(ts.GetTokenRequest(token_id="nope"), timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "token_id",
    ),
    (
        "empty token_id",
        lambda s: s.tokens.CancelToken(ts.CancelTokenRequest(token_id=""), timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "token_id",
    ),
    (
        "complete unknown",
        lambda s: s.tokens.CompleteToken(
            ts.CompleteTokenRequest(token_id=UNKNOWN_TOKEN), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
        "token_id",
    ),
    (
        "validate bad schedule",
        lambda s: s.tokens.ValidateToken(
            ts.ValidateTokenRequest(token_id=UNKNOWN_TOKEN, schedule_id=0), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "schedule_id",
    ),
    (
        "status of unknown token",
        lambda s: s.queue.GetTokenStatus(
            qs.GetTokenStatusRequest(token_id=UNKNOWN_TOKEN), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.NOT_FOUND,
        "token_id",
    ),
    (
        "queue of schedule 0",
        lambda s: s.queue.GetQueueStatus(
            qs.GetQueueStatusRequest(schedule_id=0), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "schedule_id",
    ),
    (
        "zero capacity",
        lambda s: s.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(schedule=ss.Schedule(schedule_id=1, capacity=0)),
            timeout=RPC_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "capacity",
    ),
    (
        "negative ttl",
        lambda s: s.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(schedule=ss.Schedule(schedule_id=1, active_ttl_seconds=-1)),
            timeout=RPC_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "active_ttl_seconds",
    ),
    (
        "absurd capacity",
        lambda s: s.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(schedule=ss.Schedule(schedule_id=1, capacity=10**12)),
            timeout=RPC_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "capacity",
    ),
    (
        "negative admit rate",
        lambda s: s.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(schedule=ss.Schedule(schedule_id=1, admit_rate_per_second=-3)),
            timeout=RPC_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "admit_rate_per_second",
    ),
    (
        "opens_at out of range",
        lambda s: s.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(
                schedule=ss.Schedule(schedule_id=1, opens_at=Timestamp(seconds=10**13))
            ),
            timeout=RPC_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "opens_at",
    ),
    (
        "opens_at in the past",
        lambda s: s.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(
                schedule=ss.Schedule(schedule_id=1, opens_at=Timestamp(seconds=1))
            ),
            timeout=RPC_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "opens_at",
    ),
    (
        "unknown prequeue order",
        lambda s: s.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(
                schedule=ss.Schedule(schedule_id=1, prequeue_order=9)  # type: ignore[arg-type]
            ),
            timeout=RPC_TIMEOUT,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prequeue_order",
    ),
    (
        "missing schedule",
        lambda s: s.schedules.UpsertSchedule(ss.UpsertScheduleRequest(), timeout=RPC_TIMEOUT),
        grpc.StatusCode.INVALID_ARGUMENT,
        "schedule",
    ),
    (
        "get schedule -1",
        lambda s: s.schedules.GetSchedule(
            ss.GetScheduleRequest(schedule_id=-1), timeout=RPC_TIMEOUT
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "schedule_id",
    ),
]


@pytest.mark.parametrize(
    ("call", "code", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_input_is_rejected_with_the_field_named(
    system: System, call: Call, code: grpc.StatusCode, field: str
) -> None:
    await _expect(call(system), code, field)


async def test_bytes_that_are_not_utf8_get_invalid_argument(system: System) -> None:
    channel = grpc.aio.insecure_channel(system.token_api_address)
    # Field 1 (user_id), length-delimited, with bytes that are not UTF-8.
    raw_issue = channel.unary_unary(
        "/waiting.v1.TokenService/IssueToken",
        request_serializer=lambda body: body,
        response_deserializer=lambda body: body,
    )
    async with channel:
        await _expect(
            raw_issue(b"\x0a\x02\xff\xfe\x10\x01", timeout=RPC_TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT,
            "UTF-8",
        )


async def test_the_service_keeps_serving_after_bad_input(system: System, schedule_id: int) -> None:
    for _, call, _, _ in CASES:
        with pytest.raises(grpc.aio.AioRpcError):
            await call(system)

    token = await issue(system, "still-fine", schedule_id)

    assert token.token_id
