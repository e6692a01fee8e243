"""What both gRPC servers share: options, health, reflection and signal-driven shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterable
from typing import Protocol, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # what grpc_health.v1.health.aio re-exports
from grpc_reflection.v1alpha import reflection

from waiting_core.calls import add_servicer
from waiting_core.health import Check, HealthReporter, set_health
from waiting_core.http_port import HttpPort
from waiting_core.signing_keys import SigningKeys

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024


def new_server(*, reuse_port: bool = False) -> grpc.aio.Server:
    """A grpc.aio server with small message limits and no interceptors: register services
    with ``waiting_core.calls.add_servicer``, which wraps each method once. With
    ``reuse_port``, several processes may serve the same port (SO_REUSEPORT)."""
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> HealthServicer:
    """Register grpc.health.v1 and server reflection; every service starts NOT_SERVING."""
    names = list(service_names)
    health_servicer = HealthServicer()
    add_servicer(server, health_pb2_grpc.add_HealthServicer_to_server, health_servicer)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return health_servicer


async def wait_for_shutdown_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown signal received")


class Component(Protocol):
    """Anything a service starts before serving and stops after."""

    async def start(self) -> None:
        """Start."""

    async def stop(self) -> None:
        """Stop gracefully."""


class GrpcService:
    """A grpc.aio server and its components: started in order, stopped in reverse.

    ``start`` starts the components, binds the port and serves; health says SERVING once
    every readiness check passes (:mod:`waiting_core.health`), and NOT_SERVING whenever one
    fails. ``stop`` reports NOT_SERVING, lets in-flight RPCs finish within the grace period,
    then stops the components last-started first. Both are idempotent; ``async with`` works.
    """

    def __init__(
        self,
        name: str,
        server: grpc.aio.Server,
        service_names: Iterable[str],
        components: list[Component],
        *,
        checks: list[Check],
        host: str,
        port: int,
        metrics_port: int,
        grace_seconds: float,
        keys: SigningKeys | None = None,
    ) -> None:
        self.name = name
        self.server = server
        self.service_names = list(service_names)
        self.health = add_health_and_reflection(server, self.service_names)
        self.readiness = HealthReporter(self.health, self.service_names, checks)
        self.port = 0
        self._components = components
        self._host = host
        self._address = f"{host}:{port}"
        self.http = HttpPort(
            host,
            metrics_port,
            keys.jwks if keys is not None else None,
            keys.config.jwks_max_age_seconds if keys is not None else 0,
        )
        self._grace = grace_seconds
        self._started = False

    async def start(self) -> None:
        """Start the components, then serve."""
        if self._started:
            return
        self._started = True
        for component in self._components:
            await component.start()
        self.port = self.server.add_insecure_port(self._address)
        await set_health(self.health, self.service_names, serving=False)
        await self.server.start()
        await self.http.start()
        await self.readiness.start()
        log.info("%s serving on %s (port %d)", self.name, self._address, self.port)

    async def stop(self) -> None:
        """NOT_SERVING, drain RPCs, then stop the components in reverse order."""
        if not self._started:
            return
        self._started = False
        await self.readiness.stop()
        await set_health(self.health, self.service_names, serving=False)
        await self.server.stop(self._grace)
        await self.http.stop()
        for component in reversed(self._components):
            await component.stop()
        log.info("%s stopped", self.name)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
