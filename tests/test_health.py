"""Health says NOT_SERVING while a service cannot do its job: here, with no reachable broker."""

from __future__ import annotations

import functools

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from activator.server import Activator
from tests.helpers import eventually, settings_for
from token_api.server import TokenApi
from tools.tcp_proxy import TcpProxy
from waiting_core.serving import GrpcService

SERVING = int(health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING = int(health_pb2.HealthCheckResponse.NOT_SERVING)


async def _health(app: GrpcService, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


async def _checked_twice(app: GrpcService) -> bool:
    return app.readiness.rounds >= 2


async def _serving(app: GrpcService) -> bool:
    return await _health(app) == SERVING


async def test_health_follows_the_broker(database_url: str, kafka_bootstrap: str) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    broker = TcpProxy(host, int(port))  # the broker as the services see it, cut for now
    await broker.start()
    broker.cut()
    token_settings, activator_settings = settings_for(database_url, f"127.0.0.1:{broker.port}")
    try:
        async with (
            TokenApi(token_settings) as token_api,
            Activator(activator_settings) as activator,
        ):
            for app in (token_api, activator):
                await eventually(functools.partial(_checked_twice, app), timeout=20)
                for service in ("", *app.service_names):
                    assert await _health(app, service) == NOT_SERVING
                assert any("Kafka broker" in problem for problem in app.readiness.problems)
            assert any("has not joined" in p for p in activator.readiness.problems)

            broker.restore()

            await eventually(lambda: _serving(token_api), timeout=30)
            await eventually(lambda: _serving(activator), timeout=60)
            assert token_api.readiness.problems == activator.readiness.problems == []
    finally:
        await broker.stop()
