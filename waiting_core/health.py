"""Readiness: what ``grpc.health.v1`` reports, from checks of what a service needs to work.

A check is an async callable that returns None when all is well, or the reason it is not.
:class:`HealthReporter` runs every check every two seconds and reports SERVING only while
all of them pass; a change is logged with its reasons. So a load balancer or
``grpc-health-probe`` sees NOT_SERVING while, for example, the Kafka broker cannot be
reached, instead of a service that accepts calls it cannot carry out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer  # what grpc_health.v1.health.aio re-exports
from sqlalchemy import text

from waiting_core.database import Database
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[str | None]]
CHECK_TIMEOUT_SECONDS = 2.0


async def set_health(
    health_servicer: HealthServicer, service_names: Iterable[str], serving: bool
) -> None:
    """Mark the whole server ("") and each named service SERVING or NOT_SERVING."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


class HealthReporter(BackgroundWorker):
    """Runs the checks every ``interval`` seconds and reports the verdict to the servicer."""

    name = "health-reporter"

    def __init__(
        self,
        servicer: HealthServicer,
        service_names: Sequence[str],
        checks: Sequence[Check],
        interval: float = 2.0,
    ) -> None:
        self._servicer = servicer
        self._service_names = service_names
        self._checks = checks
        self._interval = interval
        self.serving = False
        self.problems: list[str] = []
        self.rounds = 0
        super().__init__()

    async def stop(self) -> None:
        """Stop checking; close the checks' connections."""
        await super().stop()
        for check in self._checks:
            if isinstance(check, KafkaCheck):
                await check.close()

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)

    async def check_once(self) -> bool:
        """Run every check now, report the verdict, and return it."""
        problems = [problem for problem in await self._run_checks() if problem is not None]
        serving = not problems
        if serving != self.serving or self.rounds == 0:
            if serving:
                log.info("health: SERVING")
            else:
                log.warning("health: NOT_SERVING: %s", "; ".join(problems))
            await set_health(self._servicer, self._service_names, serving)
        self.serving, self.problems = serving, problems
        self.rounds += 1
        return serving

    async def _run_checks(self) -> list[str | None]:
        return list(await asyncio.gather(*(_bounded(check) for check in self._checks)))


async def _bounded(check: Check) -> str | None:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"{getattr(check, '__name__', 'a check')} timed out"


def database_check(database: Database) -> Check:
    """A check that the database answers a trivial query."""

    async def database_reachable() -> str | None:
        try:
            async with database.single_read() as session:
                await session.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            return f"database unreachable ({type(exc).__name__})"
        return None

    return database_reachable


class KafkaCheck:
    """A check that the Kafka cluster answers a metadata request; keeps one idle client."""

    __name__ = "kafka_reachable"

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._client: AIOKafkaClient | None = None

    async def __call__(self) -> str | None:
        try:
            if self._client is None:
                client = AIOKafkaClient(bootstrap_servers=self._bootstrap)
                self._client = client
                await client.bootstrap()
            else:
                await self._ask_for_brokers(self._client)
        except (Exception, asyncio.CancelledError) as exc:
            await self.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return f"Kafka broker at {self._bootstrap} unreachable ({type(exc).__name__})"
        return None

    @staticmethod
    async def _ask_for_brokers(client: AIOKafkaClient) -> None:
        """A metadata request for no topic: the brokers answer with themselves only. (Asking
        for all topics cost an idle activator 1-2% of a core on a broker with a few hundred
        topics, decoding them every 2 s.)"""
        node = client.get_random_node()
        if node is None:
            raise KafkaConnectionError("no broker known")
        await client.send(node, MetadataRequest([], allow_auto_topic_creation=False))

    async def close(self) -> None:
        """Close the client, if any."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
