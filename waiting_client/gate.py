"""TokenGate: let a downstream RPC through only for a holder admitted to its schedule.

The schedule the call is for comes in the ``x-schedule-id`` metadata. Two ways to check:

- **Offline** (``verifier=PassVerifier(...)``, recommended): the caller sends its admission
  pass as ``authorization: Bearer <pass>`` (or under ``verifier_header``). The gate checks
  the signature with the cached JWK Set, exp/nbf, iss, aud and the schedule, with no RPC
  per request (see ``waiting_client.passes``).
- **Online** (no verifier): the caller sends its waiting token as ``x-waiting-token`` and
  the gate calls ``TokenService.ValidateToken`` with a deadline.

Without reaching the handler it answers:

- UNAUTHENTICATED when the credential or schedule header is missing or malformed, or the
  pass is not good (bad signature, expired, wrong issuer or audience, unknown key, revoked);
- PERMISSION_DENIED when the token or pass is not for that schedule, or the token is not
  ACTIVE (pending, expired, done);
- UNAVAILABLE when it cannot check (no keys, or the waiting room cannot be asked): the
  gate fails closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from waiting.v1 import token_service_pb2, token_service_pb2_grpc
from waiting_client.passes import PassRejected, PassVerifier

TOKEN_HEADER = "x-waiting-token"  # noqa: S105 - a header name, not a secret
SCHEDULE_HEADER = "x-schedule-id"
PASS_HEADER = "authorization"  # noqa: S105 - a header name, not a secret

Handler = Any


def _header(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    for key, value in metadata or ():
        if key.lower() == name and isinstance(value, str):
            return value.strip()
    return ""


def _pass_of(metadata: Iterable[tuple[str, str | bytes]] | None, name: str) -> str:
    """The pass in ``name``: after "Bearer " for authorization, the whole value otherwise."""
    value = _header(metadata, name)
    if name != PASS_HEADER:
        return value
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def _refuse(code: grpc.StatusCode, message: str) -> Handler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Admits calls to ``guarded_methods`` only with an admission pass (offline, when a
    ``verifier`` is given) or an ACTIVE waiting token (ValidateToken) for the schedule."""

    def __init__(
        self,
        channel: grpc.aio.Channel | None,
        guarded_methods: Iterable[str],
        timeout_seconds: float = 1.0,
        *,
        verifier: PassVerifier | None = None,
        verifier_header: str = PASS_HEADER,
    ) -> None:
        if channel is None and verifier is None:
            raise ValueError("TokenGate needs a channel to the waiting room or a verifier")
        self._tokens = token_service_pb2_grpc.TokenServiceStub(channel) if channel else None
        self._guarded = frozenset(guarded_methods)
        self._timeout = timeout_seconds
        self._verifier = verifier
        self._pass_header = verifier_header.lower()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        if handler_call_details.method not in self._guarded:
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        if self._verifier is not None:
            refusal = await self._check_pass(self._verifier, metadata)
            return refusal if refusal is not None else await continuation(handler_call_details)
        token_id = _header(metadata, TOKEN_HEADER)
        schedule = _header(metadata, SCHEDULE_HEADER)
        if not token_id or not schedule.isdigit():
            return _refuse(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{TOKEN_HEADER} and a numeric {SCHEDULE_HEADER} are required",
            )
        refusal = await self._check(token_id, int(schedule))
        return refusal if refusal is not None else await continuation(handler_call_details)

    async def _check_pass(
        self, verifier: PassVerifier, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> Handler | None:
        admission_pass = _pass_of(metadata, self._pass_header)
        schedule = _header(metadata, SCHEDULE_HEADER)
        if not admission_pass or not schedule.isdigit():
            return _refuse(
                grpc.StatusCode.UNAUTHENTICATED,
                f"an admission pass in {self._pass_header} and a numeric {SCHEDULE_HEADER} "
                "are required",
            )
        try:
            await verifier.verify(admission_pass, int(schedule))
        except PassRejected as rejected:
            return _refuse(rejected.code, rejected.reason)
        return None

    async def _check(self, token_id: str, schedule_id: int) -> Handler | None:
        if self._tokens is None:
            return _refuse(grpc.StatusCode.UNAVAILABLE, "the waiting room cannot be reached")
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
