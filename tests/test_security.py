"""Basic security: the admin API needs the bearer credential; secrets stay out of logs."""

from __future__ import annotations

import logging

import grpc
import pytest

from tests.helpers import ADMIN_TOKEN, RPC_TIMEOUT, System, issue, wait_counts
from token_api.config import TokenApiSettings
from waiting.v1 import schedule_service_pb2, schedule_service_pb2_grpc, token_service_pb2
from waiting_core.settings import ConfigError, describe, load

REQUEST = schedule_service_pb2.GetScheduleRequest(schedule_id=1)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "required"),
        ((("authorization", "Bearer wrong"),), "not valid"),
        ((("authorization", f"Basic {ADMIN_TOKEN}"),), "required"),
    ],
)
async def test_admin_rpcs_need_the_bearer_credential(
    system: System, metadata: tuple[tuple[str, str], ...], reason: str
) -> None:
    async with grpc.aio.insecure_channel(system.token_api_address) as channel:
        stub = schedule_service_pb2_grpc.ScheduleServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetSchedule(REQUEST, metadata=metadata, timeout=RPC_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason in (caught.value.details() or "")


async def test_the_right_credential_is_accepted(system: System, schedule_id: int) -> None:
    never_configured = schedule_service_pb2.GetScheduleRequest(schedule_id=schedule_id)
    async with grpc.aio.insecure_channel(system.token_api_address) as channel:
        stub = schedule_service_pb2_grpc.ScheduleServiceStub(channel)
        reply = await stub.GetSchedule(
            never_configured,
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=RPC_TIMEOUT,
        )

    assert reply.schedule.capacity == 1000


async def test_credentials_never_reach_the_logs(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with grpc.aio.insecure_channel(system.token_api_address) as channel:
        stub = schedule_service_pb2_grpc.ScheduleServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetSchedule(
                REQUEST, metadata=(("authorization", "Bearer leaked-secret-1"),), timeout=5
            )
    await system.schedules.GetSchedule(REQUEST, timeout=RPC_TIMEOUT)

    assert "leaked-secret-1" not in caplog.text
    assert ADMIN_TOKEN not in caplog.text


def test_the_admin_token_is_not_echoed_by_settings() -> None:
    settings = load(TokenApiSettings, {"ADMIN_TOKEN": "s3cret-value"})

    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in describe(TokenApiSettings)
    with pytest.raises(ConfigError) as caught:
        load(TokenApiSettings, {"ADMIN_TOKEN": "s3cret-value", "TOKEN_API_PORT": "x"})
    assert "s3cret-value" not in str(caught.value)


async def test_a_token_of_another_schedule_never_validates(
    system: System, new_schedule_id: object
) -> None:
    mine, other = new_schedule_id(), new_schedule_id()  # type: ignore[operator]
    token = await issue(system, "u", mine)
    await wait_counts(system, mine, active=1, pending=0)

    reply = await system.tokens.ValidateToken(
        token_service_pb2.ValidateTokenRequest(token_id=token.token_id, schedule_id=other),
        timeout=RPC_TIMEOUT,
    )

    assert reply.active is False
