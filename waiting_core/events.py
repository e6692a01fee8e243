"""Kafka events: topic names, the record codec, and topic creation.

A record's key is the decimal schedule_id, so all events of a schedule land on one
partition, and its ``event-type`` header is the protobuf message's full name.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from google.protobuf.message import DecodeError, Message

from waiting.v1 import events_pb2
from waiting_core.domain import NewToken, TokenStatus, validate_token_id, validate_user_id
from waiting_core.errors import BadEvent, InvalidArgument
from waiting_core.messages import status_to_proto, timestamp
from waiting_core.models import AnyToken, OutboxEvent

log = logging.getLogger(__name__)

EVENT_TYPE_HEADER = "event-type"
_CREATE_HEADERS = [(EVENT_TYPE_HEADER, events_pb2.CreateTokenEvent.DESCRIPTOR.full_name.encode())]

# Events that make the activator look at a schedule's line.
_ADMISSION_TRIGGERS: dict[str, type[Message]] = {
    events_pb2.CreateTokenEvent.DESCRIPTOR.full_name: events_pb2.CreateTokenEvent,
    events_pb2.SlotsFreedEvent.DESCRIPTOR.full_name: events_pb2.SlotsFreedEvent,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Topics:
    """The topic names, configurable so that tests and tenants can keep theirs apart."""

    # Which service writes through this outbox: each service's relay publishes only its own
    # rows, so the two relays sharing the table never send the same event twice. Required:
    # a wrong default would make one service's relay send the other's events.
    origin: str
    waiting: str = "waiting-token"
    events: str = "token-events"
    # Copies of each partition when a service creates the topics (3 on a replicated cluster).
    replication: int = 1

    @property
    def dead_letter(self) -> str:
        """Where records that cannot be applied go: ``<waiting>.DLT``."""
        return f"{self.waiting}.DLT"


def schedule_key(schedule_id: int) -> bytes:
    """The record key of a schedule's events."""
    return str(schedule_id).encode()


def outbox_row(
    topic: str, schedule_id: int, message: Message, now: datetime, origin: str
) -> OutboxEvent:
    """A row carrying ``message`` to ``topic``, keyed by schedule, for ``origin``'s relay."""
    return OutboxEvent(
        origin=origin,
        topic=topic,
        key=schedule_key(schedule_id),
        event_type=message.DESCRIPTOR.full_name,
        payload=message.SerializeToString(),
        created_at=now,
    )


def create_token_record(token: NewToken) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the record that issues ``token`` into the log."""
    event = create_token_event(token.token_id, token.user_id, token.schedule_id, token.issued_at)
    return schedule_key(token.schedule_id), event.SerializeToString(), _CREATE_HEADERS


def create_token_event(
    token_id: str, user_id: str, schedule_id: int, issued_at: datetime
) -> events_pb2.CreateTokenEvent:
    """The event announcing a new PENDING token."""
    return events_pb2.CreateTokenEvent(
        token_id=token_id,
        user_id=user_id,
        schedule_id=schedule_id,
        issued_at=timestamp(issued_at),
        event_id=token_id,
    )


def slots_freed_row(topics: Topics, schedule_id: int, reason: str, at: datetime) -> OutboxEvent:
    """The outbox row telling the activator a schedule may have room for its next tokens."""
    event = events_pb2.SlotsFreedEvent(
        schedule_id=schedule_id, reason=reason, at=timestamp(at), event_id=uuid.uuid4().hex
    )
    return outbox_row(topics.waiting, schedule_id, event, at, topics.origin)


def state_changed_rows(
    topics: Topics,
    tokens: Sequence[AnyToken],
    from_status: TokenStatus,
    to_status: TokenStatus,
    at: datetime,
) -> list[OutboxEvent]:
    """Outbox rows announcing that each token moved from ``from_status`` to ``to_status``."""
    stamp = timestamp(at)
    return [
        outbox_row(
            topics.events,
            token.schedule_id,
            events_pb2.TokenStateChangedEvent(
                token_id=token.token_id,
                user_id=token.user_id,
                schedule_id=token.schedule_id,
                from_status=status_to_proto(from_status),
                to_status=status_to_proto(to_status),
                at=stamp,
                event_id=f"{token.token_id}:{to_status.value}",
                expires_at=timestamp(token.expires_at) if token.expires_at else None,
            ),
            at,
            topics.origin,
        )
        for token in tokens
    ]


def decode_waiting_record(
    headers: list[tuple[str, bytes]] | None, value: bytes | None
) -> tuple[int, NewToken | None]:
    """The schedule a ``waiting-token`` record asks to settle, and the token it issues, if it
    is a CreateTokenEvent; BadEvent if it cannot be decoded."""
    event_type = _header(headers, EVENT_TYPE_HEADER)
    # Records without the header are CreateTokenEvents from producers that predate it.
    message_class = _ADMISSION_TRIGGERS.get(
        event_type or events_pb2.CreateTokenEvent.DESCRIPTOR.full_name
    )
    if message_class is None:
        raise BadEvent(f"unknown event type {event_type!r}")
    message = message_class()
    try:
        message.ParseFromString(value or b"")
    except DecodeError as exc:
        raise BadEvent(f"cannot decode {message_class.DESCRIPTOR.full_name}: {exc}") from exc
    schedule_id: int = getattr(message, "schedule_id", 0)
    if schedule_id <= 0:
        raise BadEvent(f"schedule_id must be positive, got {schedule_id}")
    if isinstance(message, events_pb2.CreateTokenEvent):
        return schedule_id, _new_token(message)
    return schedule_id, None


def _new_token(event: events_pb2.CreateTokenEvent) -> NewToken:
    try:
        token_id = validate_token_id(event.token_id)
        user_id = validate_user_id(event.user_id)
    except InvalidArgument as exc:
        raise BadEvent(f"CreateTokenEvent {exc}") from exc
    if not event.HasField("issued_at"):
        raise BadEvent("CreateTokenEvent issued_at: must be set")
    return NewToken(token_id, user_id, event.schedule_id, event.issued_at.ToDatetime(UTC))


def is_slots_freed(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """Is this ``waiting-token`` record a SlotsFreedEvent (by its event-type header)?"""
    return _header(headers, EVENT_TYPE_HEADER) == _SLOTS_FREED


_SLOTS_FREED = events_pb2.SlotsFreedEvent.DESCRIPTOR.full_name


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, raw in headers or []:
        if key == name:
            return raw.decode("utf-8", "replace")
    return None


async def ensure_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    """Create the topics if they are missing; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        wanted = [
            NewTopic(topics.waiting, partitions, topics.replication),
            NewTopic(topics.events, partitions, topics.replication),
            NewTopic(topics.dead_letter, 1, topics.replication),
        ]
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                log.debug("another process created the topics first")
    finally:
        await admin.close()
