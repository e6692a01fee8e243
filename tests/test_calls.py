"""The wrapper every method gets at registration (``waiting_core.calls``), on a real grpc.aio
server: request id, guard, error mapping and metrics, with no interceptor on the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest
from prometheus_client import REGISTRY

from waiting.v1 import token_pb2, token_service_pb2, token_service_pb2_grpc
from waiting_core import serving
from waiting_core.calls import add_servicer
from waiting_core.errors import Unauthenticated, Unavailable
from waiting_core.logs import REQUEST_ID

METHOD = "/waiting.v1.TokenService/IssueToken"
if TYPE_CHECKING:
    Stub: TypeAlias = token_service_pb2_grpc.TokenServiceAsyncStub
Served: TypeAlias = "tuple[Stub, _Servicer]"


class _Servicer(token_service_pb2_grpc.TokenServiceServicer):
    """IssueToken answers with the call's request id as the token id, or fails as told."""

    def __init__(self) -> None:
        self.ran = 0

    async def IssueToken(
        self, request: token_service_pb2.IssueTokenRequest, context: object
    ) -> token_service_pb2.IssueTokenResponse:
        self.ran += 1
        if request.user_id == "unavailable":
            raise Unavailable("the broker is away")
        if request.user_id == "bug":
            raise RuntimeError("a bug")
        return token_service_pb2.IssueTokenResponse(
            token=token_pb2.Token(token_id=REQUEST_ID.get())
        )


def _refuse_without_pass(metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
    if ("pass", "yes") not in list(metadata or ()):
        raise Unauthenticated("pass: required")


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    servicer = _Servicer()  # type: ignore[abstract]  # the other methods are not called
    server = serving.new_server()
    add_servicer(
        server,
        token_service_pb2_grpc.add_TokenServiceServicer_to_server,
        servicer,
        guard=_refuse_without_pass,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Stub = token_service_pb2_grpc.TokenServiceStub(channel)
            yield stub, servicer
    finally:
        await server.stop(None)


def _handled(code: str) -> float:
    return (
        REGISTRY.get_sample_value("grpc_server_handled_total", {"method": METHOD, "code": code})
        or 0.0
    )


async def _issue(
    stub: Stub, user_id: str, *metadata: tuple[str, str]
) -> token_service_pb2.IssueTokenResponse:
    request = token_service_pb2.IssueTokenRequest(user_id=user_id, schedule_id=1)
    return await stub.IssueToken(request, metadata=(("pass", "yes"), *metadata), timeout=5)


async def test_the_callers_request_id_is_bound_for_the_call(served: Served) -> None:
    stub, _ = served
    given = await _issue(stub, "u", ("x-request-id", "req-7"))
    made_up = await _issue(stub, "u")
    made_up_next = await _issue(stub, "u")

    assert given.token.token_id == "req-7"
    assert len(made_up.token.token_id) == 16
    assert made_up_next.token.token_id != made_up.token.token_id


async def test_domain_errors_get_their_code_and_others_internal(served: Served) -> None:
    stub, _ = served
    before = {code: _handled(code) for code in ("OK", "UNAVAILABLE", "INTERNAL")}
    await _issue(stub, "u")
    codes = {}
    for user in ("unavailable", "bug"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _issue(stub, user)
        codes[user] = (caught.value.code(), caught.value.details())

    assert codes == {
        "unavailable": (grpc.StatusCode.UNAVAILABLE, "the broker is away"),
        "bug": (grpc.StatusCode.INTERNAL, "internal error"),
    }
    assert {code: _handled(code) - n for code, n in before.items()} == {
        "OK": 1,
        "UNAVAILABLE": 1,
        "INTERNAL": 1,
    }


async def test_the_guard_refuses_before_the_method_runs(served: Served) -> None:
    stub, servicer = served
    request = token_service_pb2.IssueTokenRequest(user_id="u", schedule_id=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IssueToken(request, timeout=5)

    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "pass: required",
    )
    assert servicer.ran == 0
