"""Helpers shared by the tests: the running system, settings, and polling with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from google.protobuf.message import DecodeError
from sqlalchemy import select

from activator.config import ActivatorSettings
from activator.server import Activator
from token_api.config import TokenApiSettings
from token_api.server import TokenApi
from tools.system import Cluster, create_postgres_database
from waiting.v1 import (
    events_pb2,
    queue_status_service_pb2,
    queue_status_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    token_pb2,
    token_service_pb2,
    token_service_pb2_grpc,
)
from waiting_core.database import Database
from waiting_core.models import ScheduleRow

RPC_TIMEOUT = 10.0
__all__ = ["create_postgres_database"]
ADMIN_TOKEN = "test-admin-" + secrets.token_hex(8)


if TYPE_CHECKING:  # generic in grpc-stubs only
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor


class BearerAuth(_UnaryUnaryInterceptor):
    """Adds the admin bearer credential to every call, as an admin client would."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = client_call_details._replace(  # type: ignore[attr-defined]  # a namedtuple
            metadata=tuple(client_call_details.metadata or ()) + self._metadata
        )
        return await continuation(details, request)


def admin_channel(address: str) -> grpc.aio.Channel:
    """A channel whose calls carry the admin bearer credential."""
    # grpc-stubs types `interceptors` so that every caller must cast or ignore.
    return grpc.aio.insecure_channel(address, interceptors=[BearerAuth(ADMIN_TOKEN)])  # type: ignore[list-item]


@dataclass
class System:
    """Both services running in this process, with stubs on real channels."""

    token_api: TokenApi
    activator: Activator
    token_api_settings: TokenApiSettings
    activator_settings: ActivatorSettings
    tokens: token_service_pb2_grpc.TokenServiceAsyncStub
    schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub
    queue: queue_status_service_pb2_grpc.QueueStatusServiceAsyncStub

    @property
    def token_api_address(self) -> str:
        """host:port of token_api."""
        return f"127.0.0.1:{self.token_api.port}"

    @property
    def activator_address(self) -> str:
        """host:port of the activator."""
        return f"127.0.0.1:{self.activator.port}"


def settings_for(
    database_url: str, kafka_bootstrap: str
) -> tuple[TokenApiSettings, ActivatorSettings]:
    """Settings of both services for one test session: own topics and group, port 0."""
    suffix = secrets.token_hex(4)
    common: dict[str, Any] = {
        "database_url": database_url,
        "kafka_bootstrap": kafka_bootstrap,
        "waiting_topic": f"waiting-token-{suffix}",
        "events_topic": f"token-events-{suffix}",
        "shutdown_grace_seconds": 1.0,
    }
    token_api = TokenApiSettings(
        **common,
        host="127.0.0.1",
        port=0,
        outbox_poll_seconds=0.5,
        admin_token=ADMIN_TOKEN,
        metrics_port=0,
    )
    activator = ActivatorSettings(
        **common, host="127.0.0.1", port=0, group_id=f"token-activate-{suffix}", metrics_port=0
    )
    return token_api, activator


@contextlib.asynccontextmanager
async def running_system(
    token_settings: TokenApiSettings, activator_settings: ActivatorSettings
) -> AsyncIterator[System]:
    """token_api and one activator with these settings, started, with stubs on channels."""
    async with TokenApi(token_settings) as token_api, Activator(activator_settings) as activator:
        await wait_assigned(activator)
        async with (
            admin_channel(f"127.0.0.1:{token_api.port}") as token_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{activator.port}") as activator_channel,
        ):
            yield System(
                token_api=token_api,
                activator=activator,
                token_api_settings=token_settings,
                activator_settings=activator_settings,
                tokens=token_service_pb2_grpc.TokenServiceStub(token_channel),
                schedules=schedule_service_pb2_grpc.ScheduleServiceStub(token_channel),
                queue=queue_status_service_pb2_grpc.QueueStatusServiceStub(activator_channel),
            )


async def wait_assigned(activator: Activator, timeout: float = 60.0) -> None:
    """Wait until the activator's consumer joined its group and owns partitions."""
    await asyncio.wait_for(activator.consumer.ready.wait(), timeout)
    await eventually(lambda: _has_assignment(activator), timeout=timeout)


async def _has_assignment(activator: Activator) -> bool:
    return bool(activator.consumer.assignment())


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, interval: float = 0.05
) -> None:
    """Poll ``check`` until it is true; fail with a clear message at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(interval)


async def issue(system: System, user_id: str, schedule_id: int) -> token_pb2.Token:
    """IssueToken through the real server, then wait until the activator has placed the
    token in line; returns the placed token as GetToken shows it."""
    issued = await issue_unplaced(system, user_id, schedule_id)
    return await placed(system, issued.token_id)


async def issue_unplaced(system: System, user_id: str, schedule_id: int) -> token_pb2.Token:
    """IssueToken through the real server, as the caller gets it (maybe not placed yet)."""
    reply = await system.tokens.IssueToken(
        token_service_pb2.IssueTokenRequest(user_id=user_id, schedule_id=schedule_id),
        timeout=RPC_TIMEOUT,
    )
    return reply.token


async def placed(system: System, token_id: str, timeout: float = 30.0) -> token_pb2.Token:
    """The token once the activator has placed it in line (GetToken's view)."""
    request = token_service_pb2.GetTokenRequest(token_id=token_id)
    deadline = asyncio.get_running_loop().time() + timeout
    pause = 0.005
    while True:
        token = (await system.tokens.GetToken(request, timeout=RPC_TIMEOUT)).token
        if token.position_known or asyncio.get_running_loop().time() > deadline:
            return token
        await asyncio.sleep(pause)
        pause = min(0.1, pause * 2)  # the services share this process's loop: poll gently


async def token_status(system: System, token_id: str) -> token_pb2.Token:
    """GetTokenStatus through the real activator server."""
    reply = await system.queue.GetTokenStatus(
        queue_status_service_pb2.GetTokenStatusRequest(token_id=token_id), timeout=RPC_TIMEOUT
    )
    return reply.token


async def queue_status(
    system: System, schedule_id: int
) -> queue_status_service_pb2.GetQueueStatusResponse:
    """GetQueueStatus through the real activator server."""
    return await system.queue.GetQueueStatus(
        queue_status_service_pb2.GetQueueStatusRequest(schedule_id=schedule_id),
        timeout=RPC_TIMEOUT,
    )


async def configure(system: System, schedule_id: int, **settings: Any) -> None:
    """UpsertSchedule with these settings (the others keep their values: an implied mask)."""
    await system.schedules.UpsertSchedule(
        schedule_service_pb2.UpsertScheduleRequest(
            schedule=schedule_service_pb2.Schedule(schedule_id=schedule_id, **settings)
        ),
        timeout=RPC_TIMEOUT,
    )


async def set_capacity(system: System, schedule_id: int, capacity: int) -> None:
    """UpsertSchedule of the capacity alone."""
    await configure(system, schedule_id, capacity=capacity)


async def wait_counts(system: System, schedule_id: int, active: int, pending: int) -> None:
    """Wait until the schedule shows exactly these counts."""

    async def reached() -> bool:
        status = await queue_status(system, schedule_id)
        return status.active_count == active and status.pending_count == pending

    await eventually(reached)


T = TypeVar("T")


async def read_topic(
    topic: str,
    bootstrap: str,
    pick: Callable[[ConsumerRecord[bytes, bytes]], T | None],
    done: Callable[[list[T]], bool],
    timeout: float = 30.0,
) -> list[T]:
    """Read ``topic`` from its start, keeping what ``pick`` returns, until ``done`` says so."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: list[T] = []
    try:
        async with asyncio.timeout(timeout):
            while not done(found):
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    found.extend(p for r in records if (p := pick(r)) is not None)
    finally:
        await consumer.stop()
    return found


async def create_events(system: System, token_ids: set[str]) -> list[ConsumerRecord[bytes, bytes]]:
    """The CreateTokenEvent records of these tokens on ``waiting-token``, in log order
    within each partition (a record read twice is listed twice)."""

    def mine(record: ConsumerRecord[bytes, bytes]) -> ConsumerRecord[bytes, bytes] | None:
        if dict(record.headers).get("event-type") != b"waiting.v1.CreateTokenEvent":
            return None
        try:
            event = events_pb2.CreateTokenEvent.FromString(record.value)
        except DecodeError:
            return None  # another test's poison record
        return record if event.token_id in token_ids else None

    settings = system.token_api_settings
    return await read_topic(
        settings.waiting_topic,
        settings.kafka_bootstrap,
        mine,
        lambda found: len(found) >= len(token_ids),
    )


async def admitted(system: System, user_id: str, schedule_id: int) -> token_pb2.Token:
    """Issue, wait until ACTIVE, and return the token as GetTokenStatus shows it (with its
    admission pass)."""
    token = await issue(system, user_id, schedule_id)

    async def active() -> bool:
        status = (await token_status(system, token.token_id)).status
        return status == token_pb2.TOKEN_STATUS_ACTIVE

    await eventually(active)
    return await token_status(system, token.token_id)


async def schedule_row(database: Database, schedule_id: int) -> ScheduleRow:
    """The schedule's row as the store has it now."""
    async with database.transaction(read_only=True) as session:
        stmt = select(ScheduleRow).where(ScheduleRow.schedule_id == schedule_id)
        return (await session.execute(stmt)).scalar_one()


def process_cluster(database_url: str, bootstrap: str, log_dir: Path, **extra_env: str) -> Cluster:
    """Service processes of one test on their own topics and consumer group, with a short
    session timeout (a killed activator's partitions move within seconds)."""
    suffix = secrets.token_hex(4)
    return Cluster(
        database_url,
        bootstrap,
        log_dir,
        extra_env={
            "WAITING_TOPIC": f"waiting-token-{suffix}",
            "TOKEN_EVENTS_TOPIC": f"token-events-{suffix}",
            "CONSUMER_GROUP": f"token-activate-{suffix}",
            "CONSUMER_SESSION_TIMEOUT_MS": "6000",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            **extra_env,
        },
    )


class Downstream(token_service_pb2_grpc.TokenServiceServicer):
    """Stands in for a reservation service behind a TokenGate: answers GetToken."""

    async def GetToken(
        self, request: object, context: object
    ) -> token_service_pb2.GetTokenResponse:
        return token_service_pb2.GetTokenResponse()


GUARDED = "/waiting.v1.TokenService/GetToken"  # any unary method will do as "the reservation"


@contextlib.asynccontextmanager
async def downstream_behind(
    gate: grpc.aio.ServerInterceptor,  # type: ignore[type-arg]
) -> AsyncIterator[token_service_pb2_grpc.TokenServiceAsyncStub]:
    """A Downstream server behind ``gate`` (whose guarded method is GUARDED); a stub on it."""
    server = grpc.aio.server(interceptors=[gate])
    token_service_pb2_grpc.add_TokenServiceServicer_to_server(Downstream(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield token_service_pb2_grpc.TokenServiceStub(channel)
    finally:
        await server.stop(None)
