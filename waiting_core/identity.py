"""The token id secret, shared by every service through the database and read once."""

from __future__ import annotations

import asyncio

from waiting.v1 import token_pb2
from waiting_core import repository
from waiting_core.database import Database
from waiting_core.messages import unplaced_token_to_proto
from waiting_core.token_ids import TokenIds, new_secret

SECRET_NAME = "token-ids"  # noqa: S105 - the name of the row, not a secret


class TokenIdSource:
    """Reads (or, the first time ever, makes) the secret on first use, then keeps it.

    Lazy, so that a service starts while its database is down; until the secret has been
    read, ``get`` raises the store's Unavailable like any other read.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._ids: TokenIds | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> TokenIds:
        """The service's TokenIds."""
        if self._ids is None:
            async with self._lock:
                if self._ids is None:
                    self._ids = TokenIds(await self._load())
        return self._ids

    async def _load(self) -> bytes:
        async with self._database.transaction() as session:
            return await repository.shared_secret(session, SECRET_NAME, new_secret())

    async def unplaced(self, token_id: str) -> token_pb2.Token | None:
        """The view of an id this service issued that is not in the store yet (its event is
        still in the log): PENDING, position unknown. None when the id is not ours."""
        schedule_id = (await self.get()).schedule_of(token_id)
        if schedule_id is None:
            return None
        return unplaced_token_to_proto(token_id, schedule_id)
