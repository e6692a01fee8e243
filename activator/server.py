"""Wiring of the activator: database, admission consumer and the gRPC status server."""

from __future__ import annotations

import logging

from activator.admission import Admitter, record_metrics
from activator.config import ActivatorSettings
from activator.consumer import AdmissionConsumer
from activator.maintenance import Sweeper
from activator.service import QueueStatusService
from activator.watch import WatchHub
from waiting.v1 import queue_status_service_pb2, queue_status_service_pb2_grpc
from waiting_core import metrics, serving
from waiting_core.database import Database
from waiting_core.events import Topics
from waiting_core.outbox import OutboxRelay
from waiting_core.seen import SeenTokens

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    queue_status_service_pb2.DESCRIPTOR.services_by_name["QueueStatusService"].full_name,
)


class Activator:
    """The running activator. ``start``/``stop`` are idempotent; works with ``async with``."""

    def __init__(self, settings: ActivatorSettings) -> None:
        self.settings = settings
        topics = Topics(waiting=settings.waiting_topic, events=settings.events_topic)
        # Two pools: a flood of status reads and watch streams must never starve admission.
        self.database = Database(settings.database_url, pool_size=settings.database_pool_size)
        self.read_database = Database(settings.database_url, pool_size=settings.database_pool_size)
        self.relay = OutboxRelay(
            self.database,
            settings.kafka_bootstrap,
            topics=topics,
            partitions=settings.topic_partitions,
        )
        self.hub = WatchHub(self.read_database)
        self.seen = SeenTokens(self.database)
        self.admitter = Admitter(self.database, topics)
        self.admitter.subscribe(lambda _: self.relay.wake())
        self.admitter.subscribe(self.hub.on_settlement)
        self.admitter.subscribe(record_metrics)
        self.consumer = AdmissionConsumer(settings, self.admitter, topics)
        self.sweeper = Sweeper(
            self.database, self.admitter, self.consumer.ownership, settings.sweep_interval_seconds
        )
        self.server = serving.new_server()
        queue_status_service_pb2_grpc.add_QueueStatusServiceServicer_to_server(
            QueueStatusService(self.read_database, self.hub, self.seen), self.server
        )
        self.health = serving.add_health_and_reflection(self.server, SERVICE_NAMES)
        self.port = 0
        self._started = False

    async def start(self) -> None:
        """Open the database, start consuming, bind the port and report SERVING."""
        if self._started:
            return
        self._started = True
        await self.database.start()
        await self.read_database.start()
        await self.relay.start()
        await self.hub.start()
        await self.seen.start()
        await self.consumer.start()
        await self.sweeper.start()
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        await self.server.start()
        metrics.serve_metrics(self.settings.metrics_port)
        await serving.set_health(self.health, SERVICE_NAMES, serving=True)
        log.info("activator serving on %s:%d", self.settings.host, self.port)

    async def stop(self) -> None:
        """NOT_SERVING, drain RPCs, finish and commit the batch, leave the group, close."""
        if not self._started:
            return
        self._started = False
        await serving.set_health(self.health, SERVICE_NAMES, serving=False)
        await self.server.stop(self.settings.shutdown_grace_seconds)
        await self.sweeper.stop()
        await self.consumer.stop()
        await self.hub.stop()
        await self.seen.stop()
        await self.relay.stop()
        await self.read_database.stop()
        await self.database.stop()
        log.info("activator stopped")

    async def __aenter__(self) -> Activator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def create_server(settings: ActivatorSettings) -> tuple[Activator, int]:
    """Start the activator; return it with the port it bound."""
    app = Activator(settings)
    await app.start()
    return app, app.port
