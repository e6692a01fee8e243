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
from waiting_core import serving
from waiting_core.calls import add_servicer
from waiting_core.database import Database
from waiting_core.events import Topics
from waiting_core.health import KafkaCheck, database_check
from waiting_core.identity import TokenIdSource
from waiting_core.outbox import OutboxRelay
from waiting_core.raw_reads import raw_reads_for
from waiting_core.seen import SeenTokens
from waiting_core.signing_keys import SigningKeys, key_config
from waiting_core.token_lookup import TokenLookup

log = logging.getLogger(__name__)

LEFTOVER_SCAN_SECONDS = 5.0

SERVICE_NAMES = (
    queue_status_service_pb2.DESCRIPTOR.services_by_name["QueueStatusService"].full_name,
)


class Activator(serving.GrpcService):
    """The running activator. ``start``/``stop`` are idempotent; works with ``async with``."""

    def __init__(self, settings: ActivatorSettings) -> None:
        self.settings = settings
        topics = Topics(
            waiting=settings.waiting_topic,
            events=settings.events_topic,
            origin="activator",
            replication=settings.topic_replication_factor,
        )
        # Two pools: a flood of status reads and watch streams must never starve admission.
        # SQLite runs in this loop's thread (see waiting_core/sqlite_connections.py).
        pool = settings.database_pool_size
        self.database = Database(settings.database_url, pool_size=pool, sqlite_in_loop=True)
        self.read_database = Database(settings.database_url, pool_size=pool, sqlite_in_loop=True)
        self.relay = OutboxRelay(
            self.database,
            settings.kafka_bootstrap,
            topics=topics,
            partitions=settings.topic_partitions,
            # Settles hand their events over at once; the table scan only finds what a
            # failed publish or an earlier process left behind.
            poll_interval=LEFTOVER_SCAN_SECONDS,
        )
        # GetTokenStatus's lookup, outside the ORM (raw_reads).
        self.raw_reads = raw_reads_for(settings.database_url)
        self.seen = SeenTokens(self.database)
        self.ids = TokenIdSource(self.database)
        self.hub = WatchHub(self.read_database, self.seen, self.ids)
        self.keys = SigningKeys(self.database, key_config(settings))
        self.admitter = Admitter(self.relay, topics, self.keys, reads=self.read_database)
        self.admitter.subscribe(self.hub.on_settlement)
        self.admitter.subscribe(record_metrics)
        self.consumer = AdmissionConsumer(settings, self.admitter, topics)
        self.sweeper = Sweeper(
            self.database, self.admitter, self.consumer.ownership, settings.stalled_check_seconds
        )
        server = serving.new_server()
        add_servicer(
            server,
            queue_status_service_pb2_grpc.add_QueueStatusServiceServicer_to_server,
            QueueStatusService(
                self.read_database, TokenLookup(self.raw_reads), self.hub, self.seen, self.ids
            ),
        )
        super().__init__(
            "activator",
            server,
            SERVICE_NAMES,
            [
                self.database,
                self.read_database,
                self.raw_reads,
                self.relay,
                self.hub,
                self.seen,
                self.consumer,
                self.sweeper,
            ],
            # Ready when it can admit: the store answers, the broker answers, and the consumer
            # has joined its group.
            checks=[
                database_check(self.database),
                KafkaCheck(settings.kafka_bootstrap),
                self.consumer.membership_check,
            ],
            host=settings.host,
            port=settings.port,
            metrics_port=settings.metrics_port,
            grace_seconds=settings.shutdown_grace_seconds,
            keys=self.keys,
        )


async def create_server(settings: ActivatorSettings) -> tuple[Activator, int]:
    """Start the activator; return it with the port it bound."""
    app = Activator(settings)
    await app.start()
    return app, app.port
