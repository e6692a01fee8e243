"""Conversions between store rows and protobuf messages, shared by both services."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from waiting.v1 import schedule_service_pb2, token_pb2
from waiting_core.domain import ScheduleSettings, TokenStatus
from waiting_core.models import TokenRow

_STATUS_TO_PROTO: dict[TokenStatus, token_pb2.TokenStatus.ValueType] = {
    TokenStatus.PENDING: token_pb2.TOKEN_STATUS_PENDING,
    TokenStatus.ACTIVE: token_pb2.TOKEN_STATUS_ACTIVE,
    TokenStatus.EXPIRED: token_pb2.TOKEN_STATUS_EXPIRED,
    TokenStatus.COMPLETED: token_pb2.TOKEN_STATUS_COMPLETED,
    TokenStatus.CANCELLED: token_pb2.TOKEN_STATUS_CANCELLED,
}


def status_to_proto(status: TokenStatus) -> token_pb2.TokenStatus.ValueType:
    """The proto enum value of a status."""
    return _STATUS_TO_PROTO[status]


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def token_to_proto(row: TokenRow, position: int) -> token_pb2.Token:
    """The Token message of a row; ``position`` is computed by the caller."""
    return token_pb2.Token(
        token_id=row.token_id,
        user_id=row.user_id,
        schedule_id=row.schedule_id,
        status=status_to_proto(row.status),
        position=position,
        issued_at=_timestamp(row.issued_at),
        activated_at=_timestamp(row.activated_at),
        expires_at=_timestamp(row.expires_at),
    )


def schedule_to_proto(settings: ScheduleSettings) -> schedule_service_pb2.Schedule:
    """The Schedule message of a schedule's settings."""
    return schedule_service_pb2.Schedule(
        schedule_id=settings.schedule_id,
        capacity=settings.capacity,
        active_ttl_seconds=settings.active_ttl_seconds,
        pending_ttl_seconds=settings.pending_ttl_seconds,
        admit_rate_per_second=settings.admit_rate_per_second,
    )


def schedule_from_proto(message: schedule_service_pb2.Schedule) -> ScheduleSettings:
    """Settings from a Schedule message; zero capacity and TTL mean "the default"."""
    defaults = ScheduleSettings(message.schedule_id)
    return ScheduleSettings(
        schedule_id=message.schedule_id,
        capacity=message.capacity if message.HasField("capacity") else defaults.capacity,
        active_ttl_seconds=(
            message.active_ttl_seconds
            if message.HasField("active_ttl_seconds")
            else defaults.active_ttl_seconds
        ),
        pending_ttl_seconds=message.pending_ttl_seconds,
        admit_rate_per_second=message.admit_rate_per_second,
    )
