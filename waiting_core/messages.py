"""Conversions between store rows and protobuf messages, shared by both services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from waiting.v1 import schedule_service_pb2, token_pb2
from waiting_core import domain, prequeue
from waiting_core.domain import ScheduleSettings, ScheduleUpdate, TokenStatus
from waiting_core.errors import InvalidArgument
from waiting_core.models import AnyToken, ScheduleRow
from waiting_core.prequeue import PrequeueOrder

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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp of a datetime (naive ones taken as UTC, as protobuf does).

    Exact, from the timedelta's fields: under a third of the CPU of ``Timestamp.FromDatetime``,
    which IssueToken paid twice per call (the answer and the event)."""
    if moment.tzinfo is None:
        stamp = Timestamp()
        stamp.FromDatetime(moment)
        return stamp
    since = moment - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def _timestamp(moment: datetime | None) -> Timestamp | None:
    return None if moment is None else timestamp(moment)


def token_to_proto(row: AnyToken, position: int) -> token_pb2.Token:
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
        position_known=True,
        admission_pass=(row.admission_pass or "") if row.status == TokenStatus.ACTIVE else "",
    )


def unplaced_token_to_proto(
    token_id: str, schedule_id: int, user_id: str = "", issued_at: datetime | None = None
) -> token_pb2.Token:
    """A token issued into the log that the activator has not placed in line yet: PENDING,
    with no position (and, unless the caller knows them, no user or issue time)."""
    return token_pb2.Token(
        token_id=token_id,
        user_id=user_id,
        schedule_id=schedule_id,
        status=token_pb2.TOKEN_STATUS_PENDING,
        issued_at=_timestamp(issued_at),
        position_known=False,
    )


_ORDER_TO_PROTO: dict[PrequeueOrder, schedule_service_pb2.PrequeueOrder.ValueType] = {
    PrequeueOrder.SHUFFLED: schedule_service_pb2.PREQUEUE_ORDER_SHUFFLED,
    PrequeueOrder.FIFO: schedule_service_pb2.PREQUEUE_ORDER_FIFO,
}


def schedule_to_proto(
    settings: ScheduleSettings, row: ScheduleRow | None = None
) -> schedule_service_pb2.Schedule:
    """The Schedule message of a schedule's settings, with the pre-queue's commitment (while
    shuffled), and its seed and draw time once drawn, from its row."""
    message = schedule_service_pb2.Schedule(
        schedule_id=settings.schedule_id,
        capacity=settings.capacity,
        active_ttl_seconds=settings.active_ttl_seconds,
        pending_ttl_seconds=settings.pending_ttl_seconds,
        admit_rate_per_second=settings.admit_rate_per_second,
        opens_at=_timestamp(settings.opens_at),
        prequeue_order=_ORDER_TO_PROTO[settings.prequeue_order],
    )
    seed = row.prequeue_seed if row is not None else None
    if seed is not None and settings.prequeue_order == PrequeueOrder.SHUFFLED:
        message.prequeue_commitment = prequeue.commitment(seed)
    if seed is not None and row is not None and row.drawn_at is not None:
        message.prequeue_seed = seed.hex()
        message.drawn_at.FromDatetime(row.drawn_at)
    return message


def schedule_update_from_proto(
    request: schedule_service_pb2.UpsertScheduleRequest,
) -> ScheduleUpdate:
    """The update an UpsertScheduleRequest asks for (its mask read as in AIP-134)."""
    message = request.schedule
    schedule_id = domain.validate_schedule_id(message.schedule_id, "schedule.schedule_id")
    populated = [name for name in domain.SCHEDULE_SETTINGS if _is_populated(message, name)]
    fields, replace_all = domain.mask_fields(list(request.update_mask.paths), populated)
    defaults = ScheduleSettings(schedule_id)
    values = {
        name: _setting(message, name) if _is_populated(message, name) else getattr(defaults, name)
        for name in fields
    }
    return ScheduleUpdate(schedule_id, values, replace_all)


def _setting(message: schedule_service_pb2.Schedule, name: str) -> Any:
    """A setting's value as the domain holds it."""
    if name == "opens_at":
        try:
            return message.opens_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise InvalidArgument("schedule.opens_at", "is not a valid time") from exc
    if name == "prequeue_order":
        if message.prequeue_order == schedule_service_pb2.PREQUEUE_ORDER_FIFO:
            return PrequeueOrder.FIFO
        if message.prequeue_order == schedule_service_pb2.PREQUEUE_ORDER_SHUFFLED:
            return PrequeueOrder.SHUFFLED
        raise InvalidArgument("schedule.prequeue_order", f"unknown value {message.prequeue_order}")
    return getattr(message, name)


def _is_populated(message: schedule_service_pb2.Schedule, name: str) -> bool:
    """Present for an optional field; not 0 for a plain one."""
    if message.DESCRIPTOR.fields_by_name[name].has_presence:
        return message.HasField(name)  # type: ignore[arg-type]
    return bool(getattr(message, name))
