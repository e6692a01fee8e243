"""pytest-grpc's client fixtures (grpc_addr, grpc_channel, grpc_stub) against the aio server.

pytest-grpc builds a synchronous channel and stub; its own server fixtures run a thread-pool
``grpc.server`` (or a fake in-process channel) that cannot host our async servicers. So this
module points ``grpc_addr`` at the real token_api that the session runs, and keeps
``grpc_server`` to a no-op. The blocking stub runs in a worker thread so that the event loop
serving the RPC stays free.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.helpers import System
from waiting.v1 import token_service_pb2, token_service_pb2_grpc


@pytest.fixture(scope="module")
def grpc_addr(system: System) -> str:
    return system.token_api_address


@pytest.fixture(scope="module")
def grpc_server(system: System) -> System:
    return system


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type[token_service_pb2_grpc.TokenServiceStub]:
    return token_service_pb2_grpc.TokenServiceStub


async def test_generated_sync_stub_from_pytest_grpc_issues_tokens(
    grpc_stub: token_service_pb2_grpc.TokenServiceStub, schedule_id: int
) -> None:
    request = token_service_pb2.IssueTokenRequest(user_id="sync-client", schedule_id=schedule_id)

    first = await asyncio.to_thread(grpc_stub.IssueToken, request, timeout=10)
    again = await asyncio.to_thread(grpc_stub.IssueToken, request, timeout=10)

    assert first.token.token_id == again.token.token_id


async def test_sync_stub_sees_errors_as_status_codes(
    grpc_stub: token_service_pb2_grpc.TokenServiceStub,
) -> None:
    request = token_service_pb2.GetTokenRequest(token_id="short")

    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(grpc_stub.GetToken, request, timeout=10)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
