"""The QueueStatusService servicer: counts, positions and waits, read from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from activator.status import read_queue_view, token_view
from activator.watch import WatchHub
from waiting.v1 import queue_status_service_pb2 as pb
from waiting.v1 import queue_status_service_pb2_grpc
from waiting_core import domain
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.errors import TokenNotFound
from waiting_core.identity import TokenIdSource
from waiting_core.messages import timestamp
from waiting_core.seen import SeenTokens
from waiting_core.token_lookup import TokenLookup

Context = grpc.aio.ServicerContext[object, object]


class QueueStatusService(queue_status_service_pb2_grpc.QueueStatusServiceServicer):
    """Answers where a schedule's line and a token stand, once or as a stream."""

    def __init__(
        self,
        database: Database,
        lookup: TokenLookup,
        hub: WatchHub,
        seen: SeenTokens,
        ids: TokenIdSource,
    ) -> None:
        self._lookup = lookup
        self._ids = ids
        self._seen = seen
        self._database = database
        self._hub = hub

    async def GetQueueStatus(
        self, request: pb.GetQueueStatusRequest, context: Context
    ) -> pb.GetQueueStatusResponse:
        schedule_id = domain.validate_schedule_id(request.schedule_id)
        async with self._database.single_read() as session:
            view = await read_queue_view(session, schedule_id, utc_now())
        return pb.GetQueueStatusResponse(
            schedule_id=schedule_id,
            capacity=view.capacity,
            active_count=view.active_count,
            pending_count=view.pending_count,
            estimated_wait_seconds=view.newcomer_wait.seconds,
            estimate_known=view.newcomer_wait.known,
            opens_at=timestamp(view.opens_at) if view.opens_at else None,
        )

    async def GetTokenStatus(
        self, request: pb.GetTokenStatusRequest, context: Context
    ) -> pb.GetTokenStatusResponse:
        token_id = domain.validate_token_id(request.token_id)
        now = utc_now()
        try:
            found = await self._lookup.read(token_id)
        except TokenNotFound:
            unplaced = await self._ids.unplaced(token_id)
            if unplaced is None:
                raise
            return pb.GetTokenStatusResponse(token=unplaced, estimate_known=False)
        view = token_view(found.token, found.position, found.schedule, now)
        self._seen.note(token_id, found.schedule)
        return pb.GetTokenStatusResponse(
            token=view.token,
            estimated_wait_seconds=view.wait.seconds,
            estimate_known=view.wait.known,
            in_prequeue=view.opens_at is not None,
            opens_at=timestamp(view.opens_at) if view.opens_at else None,
        )

    async def WatchToken(
        self, request: pb.WatchTokenRequest, context: Context
    ) -> AsyncIterator[pb.WatchTokenResponse]:
        token_id = domain.validate_token_id(request.token_id)
        async for view in self._hub.watch(token_id):
            yield pb.WatchTokenResponse(
                token=view.token,
                estimated_wait_seconds=view.wait.seconds,
                estimate_known=view.wait.known,
                in_prequeue=view.opens_at is not None,
                opens_at=timestamp(view.opens_at) if view.opens_at else None,
            )
