"""Prometheus metrics of both services, and the interceptor that counts gRPC calls.

Each service serves them on its own METRICS_PORT (0 turns the endpoint off). Names follow
Prometheus conventions; schedules are a label, since a sale has few of them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from waiting_core.grpc_errors import Handler, status_for

TOKENS_ISSUED = Counter("waiting_tokens_issued_total", "Tokens issued", ["schedule"])
TOKENS_ADMITTED = Counter("waiting_tokens_admitted_total", "Tokens made ACTIVE", ["schedule"])
TOKENS_EXPIRED = Counter(
    "waiting_tokens_expired_total", "Tokens expired (active TTL or abandoned)", ["schedule"]
)
TOKENS_COMPLETED = Counter("waiting_tokens_completed_total", "Tokens completed", ["schedule"])
TOKENS_CANCELLED = Counter("waiting_tokens_cancelled_total", "Tokens cancelled", ["schedule"])
PENDING = Gauge("waiting_tokens_pending", "PENDING tokens, as of the last change", ["schedule"])
ACTIVE = Gauge("waiting_tokens_active", "ACTIVE tokens, as of the last change", ["schedule"])
ISSUE_TO_ADMIT = Histogram(
    "waiting_issue_to_admit_seconds",
    "Time from issue to admission",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600, 3600),
)
CONSUMER_LAG = Gauge(
    "waiting_consumer_lag_records", "Records behind the partition's end", ["partition"]
)
OUTBOX_BACKLOG = Gauge("waiting_outbox_backlog", "Outbox events not yet published")
RPCS = Counter("grpc_server_handled_total", "RPCs completed", ["method", "code"])
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "RPC handling time",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics on ``host:port`` in a background thread; port 0 means off."""
    if port:
        start_http_server(port, addr=host)


def _code_of(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AbortError):
        return "ABORTED_BY_HANDLER"
    code = status_for(exc)
    return code.name if code is not None else "INTERNAL"


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts unary RPCs by method and status code, and times them."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behavior: Callable[..., Awaitable[Any]] = handler.unary_unary

        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, context)
            except BaseException as exc:
                code = _code_of(exc)
                raise
            finally:
                if code == "ABORTED_BY_HANDLER":
                    code = context.code().name if context.code() else "UNKNOWN"
                RPCS.labels(method, code).inc()
                RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
