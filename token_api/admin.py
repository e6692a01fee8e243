"""The admin ScheduleService servicer: schedule settings in and out."""

from __future__ import annotations

from token_api.service import Context
from waiting.v1 import schedule_service_pb2 as pb
from waiting.v1 import schedule_service_pb2_grpc
from waiting_core import domain, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.errors import InvalidArgument
from waiting_core.events import Topics, outbox_row, slots_freed_event
from waiting_core.messages import schedule_from_proto, schedule_to_proto
from waiting_core.outbox import OutboxRelay


class ScheduleService(schedule_service_pb2_grpc.ScheduleServiceServicer):
    """Reads and writes schedule settings. Raising capacity admits waiting tokens at once."""

    def __init__(self, database: Database, relay: OutboxRelay, topics: Topics) -> None:
        self._database = database
        self._relay = relay
        self._topics = topics

    async def UpsertSchedule(
        self, request: pb.UpsertScheduleRequest, context: Context
    ) -> pb.UpsertScheduleResponse:
        if not request.HasField("schedule"):
            raise InvalidArgument("schedule", "is required")
        wanted = schedule_from_proto(request.schedule).validated()
        now = utc_now()
        events = []
        async with self._database.transaction() as session:
            before = await repository.apply_settings(session, wanted, now)
            if wanted.capacity > before.capacity:
                event = slots_freed_event(wanted.schedule_id, "capacity", now)
                events.append(
                    outbox_row(
                        self._topics.waiting, wanted.schedule_id, event, now, self._topics.origin
                    )
                )
            session.add_all(events)
        self._relay.hand_over(events)
        return pb.UpsertScheduleResponse(schedule=schedule_to_proto(wanted))

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        schedule_id = domain.validate_schedule_id(request.schedule_id)
        async with self._database.transaction(read_only=True) as session:
            row = await repository.get_schedule(session, schedule_id)
        return pb.GetScheduleResponse(
            schedule=schedule_to_proto(repository.settings_of(row, schedule_id))
        )
