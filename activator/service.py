"""The QueueStatusService servicer: counts, positions and waits, read from the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc

from waiting.v1 import queue_status_service_pb2 as pb
from waiting.v1 import queue_status_service_pb2_grpc, token_pb2
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

    async def WatchToken(
        self, request: pb.WatchTokenRequest, context: Context
    ) -> AsyncIterator[pb.WatchTokenResponse]:
        token_id = domain.validate_token_id(request.token_id)
        last_sent: token_pb2.Token | None = None
        last_sent_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            current = await self._snapshot(token_id)
            if _worth_sending(last_sent, current, loop.time() - last_sent_at):
                yield pb.WatchTokenResponse(token=current)
                last_sent, last_sent_at = current, loop.time()
            if current.status not in _WATCHABLE:
                return
            await asyncio.sleep(WATCH_POLL_SECONDS)

    async def _snapshot(self, token_id: str) -> token_pb2.Token:
        async with self._database.transaction() as session:
            token = await repository.get_token(session, token_id)
            await repository.touch_token(session, token, datetime.now(UTC))
            position = await repository.current_position(session, token)
        return token_to_proto(token, position)


WATCH_POLL_SECONDS = 0.1
POSITION_UPDATE_SECONDS = 1.0
_WATCHABLE = (token_pb2.TOKEN_STATUS_PENDING, token_pb2.TOKEN_STATUS_ACTIVE)


def _worth_sending(
    last: token_pb2.Token | None, current: token_pb2.Token, since_last: float
) -> bool:
    """The first state, any status change at once; position changes at most once a second."""
    if last is None or last.status != current.status:
        return True
    return last.position != current.position and since_last >= POSITION_UPDATE_SECONDS
