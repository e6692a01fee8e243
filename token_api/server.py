"""Wiring of token_api: database, outbox relay and the gRPC server, started and stopped together."""

from __future__ import annotations

import logging

from token_api.admin import ScheduleService
from token_api.auth import AdminCredential
from token_api.config import TokenApiSettings
from token_api.issuing import IssueBatcher
from token_api.releasing import ReleaseBatcher
from token_api.service import TokenService
from waiting.v1 import (
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from waiting_core import serving
from waiting_core.calls import add_servicer
from waiting_core.database import Database
from waiting_core.events import Topics
from waiting_core.health import KafkaCheck, database_check
from waiting_core.held_tokens import HeldTokens
from waiting_core.identity import TokenIdSource
from waiting_core.outbox import OutboxRelay
from waiting_core.producer import LazyProducer
from waiting_core.raw_reads import raw_reads_for
from waiting_core.releases import release_store_for
from waiting_core.seen import SeenTokens
from waiting_core.signing_keys import SigningKeys, key_config
from waiting_core.token_lookup import TokenLookup

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    token_service_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name,
    schedule_service_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name,
)


class TokenApi(serving.GrpcService):
    """The running token_api. ``start``/``stop`` are idempotent; works with ``async with``."""

    def __init__(self, settings: TokenApiSettings) -> None:
        self.settings = settings
        self.topics = topics = Topics(
            waiting=settings.waiting_topic,
            events=settings.events_topic,
            origin="token_api",
            replication=settings.topic_replication_factor,
        )
        self.database = Database(settings.database_url, pool_size=settings.database_pool_size)
        # Each group of releases is one plain-SQL transaction (releases); the relay's
        # deletes queue on the same writer.
        self.release_store = release_store_for(settings.database_url)
        self.relay = OutboxRelay(
            self.database,
            settings.kafka_bootstrap,
            poll_interval=settings.outbox_poll_seconds,
            linger_ms=settings.producer_linger_ms,
            topics=topics,
            partitions=settings.topic_partitions,
            delete_published=self.release_store.delete_published,
        )
        self.ids = TokenIdSource(self.database)
        self.keys = SigningKeys(self.database, key_config(settings))
        producer = LazyProducer(
            settings.kafka_bootstrap,
            topics,
            settings.topic_partitions,
            linger_ms=settings.producer_linger_ms,
            request_timeout_ms=int(settings.issue_timeout_seconds * 1000),
        )
        # The issue path's read and the token lookup, outside the ORM (raw_reads).
        self.raw_reads = raw_reads_for(settings.database_url)
        self.batcher = IssueBatcher(
            self.database,
            HeldTokens(self.raw_reads),
            self.ids,
            producer,
            topics,
            linger_seconds=settings.group_linger_ms / 1000,
        )
        self.releaser = ReleaseBatcher(
            self.release_store,
            self.relay,
            topics,
            linger_seconds=settings.group_linger_ms / 1000,
        )
        self.seen = SeenTokens(self.database)
        server = serving.new_server(reuse_port=settings.reuse_port)
        add_servicer(
            server,
            token_service_pb2_grpc.add_TokenServiceServicer_to_server,
            TokenService(
                self.database,
                self.relay,
                topics,
                self.batcher,
                self.seen,
                self.releaser,
                self.ids,
                settings.issue_timeout_seconds,
                self.keys,
                TokenLookup(self.raw_reads),
            ),
        )
        add_servicer(
            server,
            schedule_service_pb2_grpc.add_ScheduleServiceServicer_to_server,
            ScheduleService(self.database, self.relay, topics, self.keys),
            guard=AdminCredential(settings.admin_token),
        )
        super().__init__(
            "token_api",
            server,
            SERVICE_NAMES,
            [
                self.database,
                self.release_store,
                self.raw_reads,
                self.relay,
                self.batcher,
                self.releaser,
                self.seen,
            ],
            # Ready when an issue can be taken: the store answers and so does the broker.
            checks=[database_check(self.database), KafkaCheck(settings.kafka_bootstrap)],
            host=settings.host,
            port=settings.port,
            metrics_port=settings.metrics_port,
            grace_seconds=settings.shutdown_grace_seconds,
            keys=self.keys,
        )


async def create_server(settings: TokenApiSettings) -> tuple[TokenApi, int]:
    """Start token_api; return it with the port it bound."""
    app = TokenApi(settings)
    await app.start()
    return app, app.port
