"""The one place where domain errors become gRPC status codes.

``waiting_core.calls`` wraps every method of both servers with :func:`abort_for`. It walks the
exception's MRO to find a code in ``STATUS_CODES``; anything unknown is logged with its
traceback and reaches the client as INTERNAL with a generic message. Requests that do not
parse as protobuf (for example strings that are not UTF-8) get INVALID_ARGUMENT, through
:func:`tolerant`, instead of the INTERNAL that grpc would answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

from waiting_core.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The code an exception maps to, found along its MRO; None when unmapped."""
    for klass in type(exc).__mro__:
        code = STATUS_CODES.get(klass)
        if code is not None:
            return code
    return None


def code_for(exc: Exception) -> grpc.StatusCode:
    """The code a call that raised ``exc`` ends with: its mapped code, or INTERNAL."""
    code = status_for(exc)
    return code if code is not None and isinstance(exc, DomainError) else grpc.StatusCode.INTERNAL


def code_name(code: grpc.StatusCode | None) -> str:
    """A status code's name for metrics; UNKNOWN when none was set."""
    return code.name if code is not None else "UNKNOWN"


async def abort_for(
    exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> NoReturn:
    """End the call with ``exc``'s code and message; an unmapped error is logged with its
    traceback and reaches the client as INTERNAL with a generic message."""
    code = status_for(exc)
    if code is None or not isinstance(exc, DomainError):
        log.exception("unhandled error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    await context.abort(code, exc.message)


def tolerant(deserializer: Callable[[bytes], Any], unparsable: Any) -> Callable[[bytes], Any]:
    """``deserializer`` that returns ``unparsable`` for bytes that are not the message (for
    example strings that are not UTF-8), so the call can answer INVALID_ARGUMENT."""

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, UnicodeDecodeError):
            return unparsable

    return deserialize
