"""The TokenService servicer: protobuf in and out, store transactions in between."""

from __future__ import annotations

import asyncio

import grpc

from token_api.issuing import IssueBatcher
from token_api.releasing import ReleaseBatcher
from waiting.v1 import token_pb2, token_service_pb2_grpc
from waiting.v1 import token_service_pb2 as pb
from waiting_core import domain
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.domain import TokenStatus
from waiting_core.errors import TokenNotFound, Unavailable
from waiting_core.events import Topics
from waiting_core.identity import TokenIdSource
from waiting_core.messages import token_to_proto
from waiting_core.models import AnyToken
from waiting_core.outbox import OutboxRelay
from waiting_core.seen import SeenTokens
from waiting_core.signing_keys import SigningKeys
from waiting_core.token_lookup import TokenLookup

Context = grpc.aio.ServicerContext[object, object]

# Kept from the caller's deadline, so that UNAVAILABLE reaches it before DEADLINE_EXCEEDED:
# a tenth of the time left, at least 50 ms (the answer's way back) and at most 500 ms (a
# stall of the loop, such as a full garbage collection in a big process, fits in it).
DEADLINE_SHARE_KEPT = 0.1
DEADLINE_MARGIN_MIN = 0.05
DEADLINE_MARGIN_MAX = 0.5
# Pauses before a complete or cancel retries a token just issued and not placed yet.
PLACEMENT_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


class TokenService(token_service_pb2_grpc.TokenServiceServicer):
    """Issues, reads, validates, completes and cancels waiting tokens."""

    def __init__(
        self,
        database: Database,
        relay: OutboxRelay,
        topics: Topics,
        batcher: IssueBatcher,
        seen: SeenTokens,
        releaser: ReleaseBatcher,
        ids: TokenIdSource,
        issue_timeout: float,
        keys: SigningKeys,
        lookup: TokenLookup,
    ) -> None:
        self._lookup = lookup
        self._keys = keys
        self._releaser = releaser
        self._ids = ids
        self._issue_timeout = issue_timeout
        self._seen = seen
        self._database = database
        self._relay = relay
        self._topics = topics
        self._batcher = batcher

    async def IssueToken(
        self, request: pb.IssueTokenRequest, context: Context
    ) -> pb.IssueTokenResponse:
        user_id = domain.validate_user_id(request.user_id)
        schedule_id = domain.validate_schedule_id(request.schedule_id)
        wait = issue_wait(self._issue_timeout, context.time_remaining())
        token = await self._batcher.issue(user_id, schedule_id, wait)
        return pb.IssueTokenResponse(token=token)

    async def GetToken(self, request: pb.GetTokenRequest, context: Context) -> pb.GetTokenResponse:
        token_id = domain.validate_token_id(request.token_id)
        try:
            found = await self._lookup.read(token_id)
        except TokenNotFound:
            return pb.GetTokenResponse(token=await self._unplaced(token_id))
        self._seen.note(token_id, found.schedule)
        return pb.GetTokenResponse(token=token_to_proto(found.token, found.position))

    async def ValidateToken(
        self, request: pb.ValidateTokenRequest, context: Context
    ) -> pb.ValidateTokenResponse:
        token_id = domain.validate_token_id(request.token_id)
        schedule_id = domain.validate_schedule_id(request.schedule_id)
        try:
            found = await self._lookup.read(token_id)
        except TokenNotFound:
            return pb.ValidateTokenResponse(active=False, token=await self._unplaced(token_id))
        token = found.token
        active = (
            token.status == TokenStatus.ACTIVE
            and token.schedule_id == schedule_id
            and token.expires_at is not None
            and token.expires_at > utc_now()
        )
        return pb.ValidateTokenResponse(active=active, token=token_to_proto(token, found.position))

    async def CompleteToken(
        self, request: pb.CompleteTokenRequest, context: Context
    ) -> pb.CompleteTokenResponse:
        token = await self._release(request.token_id, TokenStatus.COMPLETED)
        return pb.CompleteTokenResponse(token=token_to_proto(token, 0))

    async def CancelToken(
        self, request: pb.CancelTokenRequest, context: Context
    ) -> pb.CancelTokenResponse:
        token = await self._release(request.token_id, TokenStatus.CANCELLED)
        return pb.CancelTokenResponse(token=token_to_proto(token, 0))

    async def _unplaced(self, token_id: str) -> token_pb2.Token:
        """A token just issued, whose event the activator has not applied yet; else NOT_FOUND."""
        token = await self._ids.unplaced(token_id)
        if token is None:
            raise TokenNotFound(token_id)
        return token

    async def _release(self, raw_token_id: str, target: TokenStatus) -> AnyToken:
        token_id = domain.validate_token_id(raw_token_id)
        for wait in PLACEMENT_WAITS:
            try:
                return await self._releaser.release(token_id, target)
            except TokenNotFound:
                if await self._ids.unplaced(token_id) is None:
                    raise
                await asyncio.sleep(wait)  # issued a moment ago: the activator places it soon
        raise Unavailable("token_id: the token was just issued and is not in line yet; retry")

    async def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: Context
    ) -> pb.GetSigningKeysResponse:
        return pb.GetSigningKeysResponse(jwks_json=await self._keys.jwks())


def issue_wait(issue_timeout: float, remaining: float | None) -> float:
    """How long an issue may wait for Kafka: the configured timeout, cut short enough that
    the caller's deadline still sees the UNAVAILABLE."""
    if remaining is None:
        return issue_timeout
    margin = min(DEADLINE_MARGIN_MAX, max(DEADLINE_MARGIN_MIN, remaining * DEADLINE_SHARE_KEPT))
    return max(0.0, min(issue_timeout, remaining - margin))
