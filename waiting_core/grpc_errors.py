"""The one place where domain errors become gRPC status codes.

``ErrorMappingInterceptor`` wraps every method of a grpc.aio server. It walks the exception's
MRO to find a code in ``STATUS_CODES``; anything unknown is logged with its traceback and
reaches the client as INTERNAL with a generic message. Requests that do not parse as
protobuf (for example strings that are not UTF-8) get INVALID_ARGUMENT instead of the
INTERNAL that grpc would answer.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

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

_UNPARSABLE = object()
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class WrappedHandlers:
    """An interceptor's wrapped handler per method, built once: grpc hands every call of a
    method the same handler, so wrapping it per call only made garbage. A different handler
    for the method (an interceptor's refusal) is wrapped anew and not kept."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def get(self, method: str, handler: Handler, wrap: Callable[[Handler], Handler]) -> Handler:
        """``wrap(handler)``, from the cache when ``handler`` is the one seen before."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap(handler)
        if cached is None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The code an exception maps to, found along its MRO; None when unmapped."""
    for klass in type(exc).__mro__:
        code = STATUS_CODES.get(klass)
        if code is not None:
            return code
    return None


async def _abort_for(
    exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> None:
    code = status_for(exc)
    if code is None or not isinstance(exc, DomainError):
        log.exception("unhandled error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    else:
        await context.abort(code, exc.message)


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, UnicodeDecodeError):
            return _UNPARSABLE

    return deserialize


async def _reject_unparsable(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        "request: not a valid protobuf message of this method (strings must be UTF-8)",
    )


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], method: str
) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is _UNPARSABLE:
            await _reject_unparsable(context)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the mapping point for every error
            await _abort_for(exc, context, method)

    return wrapped


def _wrap_stream(
    behavior: Callable[..., AsyncIterator[Any]], method: str
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if request is _UNPARSABLE:
            await _reject_unparsable(context)
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - the mapping point for every error
            await _abort_for(exc, context, method)

    return wrapped


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps domain errors to status codes for unary-unary and unary-stream methods."""

    def __init__(self) -> None:
        self._handlers = WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        return self._handlers.get(method, handler, lambda h: _mapping(h, method))


def _mapping(handler: Handler, method: str) -> Handler:
    deserializer = _tolerant(handler.request_deserializer)
    if inspect.iscoroutinefunction(handler.unary_unary):
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, method),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if inspect.isasyncgenfunction(handler.unary_stream):
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream, method),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler
