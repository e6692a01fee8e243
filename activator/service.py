"""The QueueStatusService servicer: counts, positions and waits, read from the store."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from waiting.v1 import queue_status_service_pb2 as pb
from waiting.v1 import queue_status_service_pb2_grpc
from waiting_core import domain, repository
from waiting_core.database import Database
from waiting_core.messages import token_to_proto

Context = grpc.aio.ServicerContext[object, object]


class QueueStatusService(queue_status_service_pb2_grpc.QueueStatusServiceServicer):
    """Answers where a schedule's line and a token stand."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def GetQueueStatus(
        self, request: pb.GetQueueStatusRequest, context: Context
    ) -> pb.GetQueueStatusResponse:
        schedule_id = domain.validate_schedule_id(request.schedule_id)
        async with self._database.transaction(read_only=True) as session:
            row = await repository.get_schedule(session, schedule_id)
        settings = repository.settings_of(row, schedule_id)
        return pb.GetQueueStatusResponse(
            schedule_id=schedule_id,
            capacity=settings.capacity,
            active_count=row.active_count if row else 0,
            pending_count=row.pending_count if row else 0,
        )

    async def GetTokenStatus(
        self, request: pb.GetTokenStatusRequest, context: Context
    ) -> pb.GetTokenStatusResponse:
        token_id = domain.validate_token_id(request.token_id)
        async with self._database.transaction() as session:
            token = await repository.get_token(session, token_id)
            await repository.touch_token(session, token, datetime.now(UTC))
            position = await repository.current_position(session, token)
        return pb.GetTokenStatusResponse(token=token_to_proto(token, position))
