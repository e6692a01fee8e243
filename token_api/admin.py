"""The admin ScheduleService servicer: schedule settings in and out, and key rotation."""

from __future__ import annotations

import logging

from token_api.service import Context
from waiting.v1 import schedule_service_pb2 as pb
from waiting.v1 import schedule_service_pb2_grpc
from waiting_core import domain, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.errors import InvalidArgument
from waiting_core.events import Topics, slots_freed_row
from waiting_core.messages import schedule_to_proto, schedule_update_from_proto, timestamp
from waiting_core.outbox import OutboxRelay
from waiting_core.signing_keys import SigningKeys

log = logging.getLogger(__name__)


class ScheduleService(schedule_service_pb2_grpc.ScheduleServiceServicer):
    """Reads and updates schedule settings. Raising capacity admits waiting tokens at once."""

    def __init__(
        self, database: Database, relay: OutboxRelay, topics: Topics, keys: SigningKeys
    ) -> None:
        self._keys = keys
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
            row = await repository.get_schedule(tx.session, after.schedule_id)
        return pb.UpsertScheduleResponse(schedule=schedule_to_proto(after, row))

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        schedule_id = domain.validate_schedule_id(request.schedule_id)
        async with self._database.transaction(read_only=True) as session:
            row = await repository.get_schedule(session, schedule_id)
        return pb.GetScheduleResponse(
            schedule=schedule_to_proto(repository.settings_of(row, schedule_id), row)
        )

    async def RotateSigningKey(
        self, request: pb.RotateSigningKeyRequest, context: Context
    ) -> pb.RotateSigningKeyResponse:
        key = await self._keys.rotate()
        log.info(
            "signing key %s (%s) made; it signs from %s", key.kid, key.algorithm, key.signs_from
        )
        return pb.RotateSigningKeyResponse(
            kid=key.kid, algorithm=key.algorithm, signs_from=timestamp(key.signs_from)
        )
