"""TokenGate: gate downstream RPCs on ``TokenService.ValidateToken`` (the seed's
TokenInterceptor, done right).

The caller sends its waiting token and the schedule in metadata (``x-waiting-token``,
``x-schedule-id``). For every guarded method the gate calls ValidateToken with a deadline
and answers, without reaching the handler:

- UNAUTHENTICATED when the token or schedule header is missing or malformed;
- PERMISSION_DENIED when the token is not ACTIVE for that schedule (pending, expired, done,
  or another schedule's);
- UNAVAILABLE when the waiting room cannot be asked: the gate fails closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from waiting.v1 import token_service_pb2, token_service_pb2_grpc

TOKEN_HEADER = "x-waiting-token"  # noqa: S105 - a header name, not a secret
SCHEDULE_HEADER = "x-schedule-id"

Handler = Any


def _header(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    for key, value in metadata or ():
        if key.lower() == name and isinstance(value, str):
            return value.strip()
    return ""


def _refuse(code: grpc.StatusCode, message: str) -> Handler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Admits calls to ``guarded_methods`` only with an ACTIVE waiting token."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        guarded_methods: Iterable[str],
        timeout_seconds: float = 1.0,
    ) -> None:
        self._tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        self._guarded = frozenset(guarded_methods)
        self._timeout = timeout_seconds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        if handler_call_details.method not in self._guarded:
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        token_id = _header(metadata, TOKEN_HEADER)
        schedule = _header(metadata, SCHEDULE_HEADER)
        if not token_id or not schedule.isdigit():
            return _refuse(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{TOKEN_HEADER} and a numeric {SCHEDULE_HEADER} are required",
            )
        refusal = await self._check(token_id, int(schedule))
        return refusal if refusal is not None else await continuation(handler_call_details)

    async def _check(self, token_id: str, schedule_id: int) -> Handler | None:
        request = token_service_pb2.ValidateTokenRequest(token_id=token_id, schedule_id=schedule_id)
        try:
            reply = await self._tokens.ValidateToken(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                return _refuse(
                    grpc.StatusCode.PERMISSION_DENIED, f"{TOKEN_HEADER}: not a valid token"
                )
            return _refuse(grpc.StatusCode.UNAVAILABLE, "the waiting room cannot be reached")
        if not reply.active:
            return _refuse(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{TOKEN_HEADER}: the token is not active for schedule {schedule_id}",
            )
        return None
