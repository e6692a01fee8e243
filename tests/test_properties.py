"""Property-based bad input over every RPC of both services, through real server processes.

Whatever a client sends — empty, huge or odd strings, raw bytes that are not a valid
message, negative or zero ids, unknown ids, ids of another schedule, wrong transitions — the
answer is OK or one of INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS with
a message, never INTERNAL or UNKNOWN, and both services keep serving. Hypothesis runs
derandomized (a fixed seed) with EXAMPLES examples per RPC and per database.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ADMIN_TOKEN
from tools.system import Cluster, migrate
from waiting.v1 import (
    queue_status_service_pb2 as qs,
)
from waiting.v1 import (
    queue_status_service_pb2_grpc,
    schedule_service_pb2_grpc,
    token_service_pb2_grpc,
)
from waiting.v1 import (
    schedule_service_pb2 as ss,
)
from waiting.v1 import (
    token_service_pb2 as ts,
)

EXAMPLES = 150
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Services:
    """Sync stubs on real server processes, and tokens in known states."""

    tokens: token_service_pb2_grpc.TokenServiceStub
    schedules: schedule_service_pb2_grpc.ScheduleServiceStub
    queue: queue_status_service_pb2_grpc.QueueStatusServiceStub
    channels: list[grpc.Channel]
    known_tokens: list[str]
    schedule_id: int


@pytest.fixture(scope="module")
def services(
    database_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """token_api and an activator as processes, on the session's broker and a database."""
    suffix = secrets.token_hex(4)
    migrate(database_url)
    cluster = Cluster(
        database_url,
        kafka_bootstrap,
        Path(tmp_path_factory.mktemp("property-logs")),
        extra_env={
            "WAITING_TOPIC": f"waiting-token-{suffix}",
            "TOKEN_EVENTS_TOPIC": f"token-events-{suffix}",
            "CONSUMER_GROUP": f"token-activate-{suffix}",
            "ADMIN_TOKEN": ADMIN_TOKEN,
        },
    )
    token_api = cluster.start("token_api")
    activator = cluster.start("activator")
    token_channel = grpc.insecure_channel(token_api.address)
    activator_channel = grpc.insecure_channel(activator.address)
    try:
        found = Services(
            token_service_pb2_grpc.TokenServiceStub(token_channel),
            schedule_service_pb2_grpc.ScheduleServiceStub(token_channel),
            queue_status_service_pb2_grpc.QueueStatusServiceStub(activator_channel),
            [token_channel, activator_channel],
            [],
            secrets.randbelow(10**9) + 1,
        )
        _seed_tokens(found)
        yield found
        _assert_still_serving(found)
    finally:
        for channel in (token_channel, activator_channel):
            channel.close()
        cluster.stop_all()


def _seed_tokens(services: Services) -> None:
    """A PENDING, an ACTIVE and a COMPLETED token, for transitions that must be refused."""
    services.schedules.UpsertSchedule(
        ss.UpsertScheduleRequest(
            schedule=ss.Schedule(schedule_id=services.schedule_id, capacity=1)
        ),
        metadata=AUTH,
        timeout=10,
    )
    for user in ("active", "pending", "completed"):
        reply = services.tokens.IssueToken(
            ts.IssueTokenRequest(user_id=user, schedule_id=services.schedule_id), timeout=10
        )
        services.known_tokens.append(reply.token.token_id)


def _assert_still_serving(services: Services) -> None:
    for channel in services.channels:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    reply = services.tokens.IssueToken(
        ts.IssueTokenRequest(user_id="after-the-storm", schedule_id=1), timeout=10
    )
    assert reply.token.token_id


def _outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        error = exc
    else:
        return grpc.StatusCode.OK
    code: grpc.StatusCode = error.code()
    assert code in ALLOWED, f"{code}: {error.details()}"
    assert error.details(), "an error must say what is wrong"
    return code


# --- strategies --------------------------------------------------------------------------

odd_text = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=100, max_size=3000),
    st.sampled_from(
        [" ", "\x00", "\u202e", "🎫" * 50, "a" * 129, "../../etc/passwd", "' OR 1=1 --"]
    ),
)
ids = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 2**63 - 1]),
)
token_ids = st.one_of(
    odd_text,
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        min_size=32,
        max_size=32,
    ),
    st.integers(min_value=0, max_value=2).map(lambda i: f"@known{i}"),
)


def _resolve(services: Services, token_id: str) -> str:
    if token_id.startswith("@known"):
        return services.known_tokens[int(token_id[-1])]
    return token_id


# --- TokenService --------------------------------------------------------------------------


@PROPERTY
@given(user_id=odd_text, schedule_id=ids)
def test_issue_token(services: Services, user_id: str, schedule_id: int) -> None:
    _outcome(
        lambda: services.tokens.IssueToken(
            ts.IssueTokenRequest(user_id=user_id, schedule_id=schedule_id), timeout=10
        )
    )


@PROPERTY
@given(token_id=token_ids)
def test_get_token(services: Services, token_id: str) -> None:
    _outcome(
        lambda: services.tokens.GetToken(
            ts.GetTokenRequest(token_id=_resolve(services, token_id)), timeout=10
        )
    )


@PROPERTY
@given(token_id=token_ids, schedule_id=ids)
def test_validate_token(services: Services, token_id: str, schedule_id: int) -> None:
    resolved = _resolve(services, token_id)
    reply: list[Any] = []
    code = _outcome(
        lambda: reply.append(
            services.tokens.ValidateToken(
                ts.ValidateTokenRequest(token_id=resolved, schedule_id=schedule_id), timeout=10
            )
        )
    )
    if code == grpc.StatusCode.OK and schedule_id != services.schedule_id:
        assert reply[0].active is False, "a token of another schedule must never validate"


@PROPERTY
@given(token_id=token_ids)
def test_complete_token(services: Services, token_id: str) -> None:
    _outcome(
        lambda: services.tokens.CompleteToken(
            ts.CompleteTokenRequest(token_id=_resolve(services, token_id)), timeout=10
        )
    )


@PROPERTY
@given(token_id=token_ids)
def test_cancel_token(services: Services, token_id: str) -> None:
    resolved = _resolve(services, token_id)
    if resolved in services.known_tokens[:2]:
        return  # keep the seeded ACTIVE and PENDING tokens for the other properties
    _outcome(
        lambda: services.tokens.CancelToken(ts.CancelTokenRequest(token_id=resolved), timeout=10)
    )


# --- ScheduleService -----------------------------------------------------------------------


@PROPERTY
@given(
    schedule_id=ids,
    capacity=st.one_of(st.none(), ids),
    active_ttl=st.one_of(st.none(), ids),
    pending_ttl=ids,
    rate=ids,
)
def test_upsert_schedule(
    services: Services,
    schedule_id: int,
    capacity: int | None,
    active_ttl: int | None,
    pending_ttl: int,
    rate: int,
) -> None:
    if schedule_id == services.schedule_id:
        return
    schedule = ss.Schedule(
        schedule_id=schedule_id, pending_ttl_seconds=pending_ttl, admit_rate_per_second=rate
    )
    if capacity is not None:
        schedule.capacity = capacity
    if active_ttl is not None:
        schedule.active_ttl_seconds = active_ttl
    _outcome(
        lambda: services.schedules.UpsertSchedule(
            ss.UpsertScheduleRequest(schedule=schedule), metadata=AUTH, timeout=10
        )
    )


@PROPERTY
@given(schedule_id=ids)
def test_get_schedule(services: Services, schedule_id: int) -> None:
    _outcome(
        lambda: services.schedules.GetSchedule(
            ss.GetScheduleRequest(schedule_id=schedule_id), metadata=AUTH, timeout=10
        )
    )


# --- QueueStatusService --------------------------------------------------------------------


@PROPERTY
@given(schedule_id=ids)
def test_get_queue_status(services: Services, schedule_id: int) -> None:
    _outcome(
        lambda: services.queue.GetQueueStatus(
            qs.GetQueueStatusRequest(schedule_id=schedule_id), timeout=10
        )
    )


@PROPERTY
@given(token_id=token_ids)
def test_get_token_status(services: Services, token_id: str) -> None:
    _outcome(
        lambda: services.queue.GetTokenStatus(
            qs.GetTokenStatusRequest(token_id=_resolve(services, token_id)), timeout=10
        )
    )


@settings(PROPERTY, max_examples=EXAMPLES // 3)
@given(token_id=token_ids)
def test_watch_token(services: Services, token_id: str) -> None:
    def first_update() -> None:
        stream = services.queue.WatchToken(
            qs.WatchTokenRequest(token_id=_resolve(services, token_id)), timeout=10
        )
        try:
            next(iter(stream))
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs

    _outcome(first_update)


# --- raw bytes on every method ---------------------------------------------------------------

METHODS = [
    ("token", "/waiting.v1.TokenService/IssueToken"),
    ("token", "/waiting.v1.TokenService/GetToken"),
    ("token", "/waiting.v1.TokenService/ValidateToken"),
    ("token", "/waiting.v1.TokenService/CompleteToken"),
    ("token", "/waiting.v1.TokenService/CancelToken"),
    ("token", "/waiting.v1.ScheduleService/UpsertSchedule"),
    ("token", "/waiting.v1.ScheduleService/GetSchedule"),
    ("queue", "/waiting.v1.QueueStatusService/GetQueueStatus"),
    ("queue", "/waiting.v1.QueueStatusService/GetTokenStatus"),
]


@PROPERTY
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=512))
def test_raw_bytes_never_break_a_method(
    services: Services, method: tuple[str, str], body: bytes
) -> None:
    channel = services.channels[0 if method[0] == "token" else 1]
    call = channel.unary_unary(
        method[1], request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    _outcome(lambda: call(body, metadata=AUTH, timeout=10))
