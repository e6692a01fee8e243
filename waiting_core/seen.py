"""Records which PENDING tokens were asked about, and writes that down in batches.

Reads (GetToken, GetTokenStatus, WatchToken) stay read-only transactions: they only note the
token id here, and a background task marks all noted tokens seen with one UPDATE every
``interval`` seconds. The abandonment sweep therefore sees a token's last question at most
``interval`` late, which is far below any pending TTL (at least 1 s). Only schedules with a
pending TTL read "seen", so only their tokens are noted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from waiting_core import domain, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.models import ScheduleRow
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

CHUNK = 500


class SeenTokens(BackgroundWorker):
    """Batches "somebody asked about this token" into periodic updates."""

    name = "seen-tokens"

    def __init__(self, database: Database, interval: float = 0.25) -> None:
        self._database = database
        self._interval = interval
        self._pending: set[str] = set()
        self._noted = asyncio.Event()  # idle until something is noted: no wake-ups for nothing
        super().__init__()

    def note(self, token_id: str, schedule: ScheduleRow | None) -> None:
        """Remember that the token was asked about just now, if its schedule abandons tokens.

        Schedules without a pending TTL cost no writes; ``abandonment_since`` covers the
        moment one is switched on.
        """
        if schedule is not None and domain.abandons(schedule.pending_ttl_seconds):
            self._pending.add(token_id)
            self._noted.set()

    async def stop(self) -> None:
        """Stop, then flush what is left."""
        await super().stop()
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> None:
        """Mark every noted PENDING token as seen now."""
        noted, self._pending = list(self._pending), set()
        now = utc_now()
        for start in range(0, len(noted), CHUNK):
            async with self._database.transaction() as session:
                await repository.touch_tokens(session, noted[start : start + CHUNK], now)

    async def _run(self) -> None:
        while True:
            await self._noted.wait()
            await asyncio.sleep(self._interval)
            self._noted.clear()
            try:
                await self.flush()
            except Exception:
                log.warning("could not record seen tokens; will retry", exc_info=True)
