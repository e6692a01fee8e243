"""The admin ScheduleService servicer: schedule settings in and out."""

from __future__ import annotations

from token_api.service import Context
from waiting.v1 import schedule_service_pb2 as pb
from waiting.v1 import schedule_service_pb2_grpc
from waiting_core import domain, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.errors import InvalidArgument
from waiting_core.events import Topics, slots_freed_row
from waiting_core.messages import schedule_to_proto, schedule_update_from_proto
from waiting_core.outbox import OutboxRelay


class ScheduleService(schedule_service_pb2_grpc.ScheduleServiceServicer):
    """Reads and updates schedule settings. Raising capacity admits waiting tokens at once."""

    def __init__(self, database: Database, relay: OutboxRelay, topics: Topics) -> None:
        self._database = database
        self._relay = relay
        self._topics = topics

    async def UpsertSchedule(
        self, request: pb.UpsertScheduleRequest, context: Context
    ) -> pb.UpsertScheduleResponse:
        if not request.HasField("schedule"):
            raise InvalidArgument("schedule", "is required")
        update = schedule_update_from_proto(request)
        now = utc_now()
        async with self._relay.transaction() as tx:
            before, after = await repository.apply_settings(tx.session, update, now)
            if after != before:  # the activator re-settles: admits, re-plans its due moment
                tx.publish([slots_freed_row(self._topics, after.schedule_id, "settings", now)])
        return pb.UpsertScheduleResponse(schedule=schedule_to_proto(after))

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        schedule_id = domain.validate_schedule_id(request.schedule_id)
        async with self._database.transaction(read_only=True) as session:
            row = await repository.get_schedule(session, schedule_id)
        return pb.GetScheduleResponse(
            schedule=schedule_to_proto(repository.settings_of(row, schedule_id))
        )
