"""Bearer-token guard for the admin ScheduleService.

Admin RPCs need ``authorization: Bearer <ADMIN_TOKEN>``. With no ADMIN_TOKEN configured the
admin API is closed. The credential is compared in constant time and never logged. A refusal
is raised as ``errors.Unauthenticated``, which ``waiting_core.grpc_errors`` maps to the code.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from waiting_core.errors import Unauthenticated
from waiting_core.grpc_errors import Handler

ADMIN_PREFIX = "/waiting.v1.ScheduleService/"


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer":
                return credential.strip()
    return ""


def _deny(message: str) -> Handler:
    """A handler that refuses the call; the error interceptor maps it to UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        raise Unauthenticated(message)

    return grpc.unary_unary_rpc_method_handler(deny)


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Lets admin RPCs through only with the configured bearer credential."""

    def __init__(self, admin_token: str) -> None:
        self._expected = admin_token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        if not handler_call_details.method.startswith(ADMIN_PREFIX):
            return await continuation(handler_call_details)
        if not self._expected:
            return _deny("authorization: the admin API is disabled (set ADMIN_TOKEN)")
        given = _bearer(handler_call_details.invocation_metadata).encode()
        if not given:
            return _deny("authorization: a bearer credential is required")
        if not hmac.compare_digest(given, self._expected):
            return _deny("authorization: the bearer credential is not valid")
        return await continuation(handler_call_details)
