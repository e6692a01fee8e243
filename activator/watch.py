"""WatchToken fan-out: every open stream is served by one loop, not one database poll each.

- Status: every ``status_interval`` the hub reads the status of all watched tokens in one
  query (in chunks), so an admission made by any activator reaches the stream within about
  that interval. Admissions made by this activator are pushed at once, from the commit.
- Position and wait: every ``position_interval`` (1 s) the hub recomputes them for all watched
  PENDING tokens with one range query per schedule, and marks those tokens as seen, so a
  watcher is never dropped as abandoned.

A watcher holds only the latest view; a slow client skips stale ones instead of queueing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from activator.admission import Settlement
from activator.status import TokenView, read_token_views, token_view
from waiting_core import repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.domain import TokenStatus, WaitEstimate
from waiting_core.errors import TokenNotFound, Unavailable
from waiting_core.identity import TokenIdSource
from waiting_core.models import TokenRow
from waiting_core.seen import SeenTokens
from waiting_core.worker import BackgroundWorker

log = logging.getLogger(__name__)

CHUNK = 500


class _Watcher:
    def __init__(self, view: TokenView, status: TokenStatus) -> None:
        self.latest = view
        self.status = status
        self.changed = asyncio.Event()
        self.changed.set()

    @property
    def placed(self) -> bool:
        """Whether the token was in line when this watcher last looked."""
        return self.latest.token.position_known

    def offer(self, view: TokenView, status: TokenStatus) -> None:
        self.latest, self.status = view, status
        self.changed.set()


class WatchHub(BackgroundWorker):
    """Serves WatchToken streams. ``start``/``stop`` are idempotent."""

    name = "watch-hub"

    def __init__(
        self,
        database: Database,
        seen: SeenTokens,
        ids: TokenIdSource,
        status_interval: float = 0.05,
        position_interval: float = 1.0,
    ) -> None:
        self._database = database
        self._seen = seen
        self._ids = ids
        self.status_interval = status_interval
        self._position_interval = position_interval
        self._watchers: dict[str, set[_Watcher]] = {}
        self.polls = 0
        self._watching = asyncio.Event()  # idle while no stream is open: no wake-ups
        super().__init__()

    @property
    def watched(self) -> int:
        """How many streams are open."""
        return sum(len(w) for w in self._watchers.values())

    async def watch(self, token_id: str) -> AsyncIterator[TokenView]:
        """The token's view now, then its changes, until it leaves PENDING or ACTIVE.

        A token just issued and not yet placed starts as PENDING with no position; the
        frequent status poll picks it up as soon as it is in line.
        """
        watcher = _Watcher(*await self._first_view(token_id))
        self._watchers.setdefault(token_id, set()).add(watcher)
        self._watching.set()
        try:
            while True:
                await watcher.changed.wait()
                watcher.changed.clear()
                yield watcher.latest
                if not watcher.status.is_live:
                    return
        finally:
            self._forget(token_id, watcher)

    async def _first_view(self, token_id: str) -> tuple[TokenView, TokenStatus]:
        now = utc_now()
        try:
            async with self._database.transaction(read_only=True) as session:
                token = await repository.get_token(session, token_id)
                view = (await read_token_views(session, [token], now))[token_id]
                await self._note_seen(session, [token])
        except TokenNotFound:
            unplaced = await self._ids.unplaced(token_id)
            if unplaced is None:
                raise
            return TokenView(unplaced, WaitEstimate(0, known=False)), TokenStatus.PENDING
        return view, token.status

    def on_settlement(self, settlement: Settlement) -> None:
        """Push status changes committed by this activator at once."""
        if not self._watchers:
            return
        now = utc_now()
        for tokens in (settlement.admitted, settlement.expired, settlement.abandoned):
            for token in tokens:
                for watcher in self._watchers.get(token.token_id, ()):
                    watcher.offer(token_view(token, 0, None, now), token.status)

    def _forget(self, token_id: str, watcher: _Watcher) -> None:
        watchers = self._watchers.get(token_id)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[token_id]
        if not self._watchers:
            self._watching.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_positions = loop.time()
        while True:
            await self._watching.wait()
            await asyncio.sleep(self.status_interval)
            if not self._watchers:
                continue
            with_positions = loop.time() >= next_positions
            if with_positions:
                next_positions = loop.time() + self._position_interval
            try:
                await self._refresh(with_positions)
            except (Unavailable, TokenNotFound) as exc:
                log.warning("watch refresh skipped: %s", exc)
            except Exception:
                log.exception("watch refresh failed; trying again")

    async def _refresh(self, with_positions: bool) -> None:
        ids = list(self._watchers)
        now = utc_now()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            async with self._database.transaction(read_only=True) as session:
                self.polls += 1
                if not with_positions:
                    # The frequent poll reads two columns; only changed tokens are loaded.
                    statuses = await repository.token_statuses(session, chunk)
                    chunk = [i for i, s in statuses.items() if self._status_changed(i, s)]
                tokens = await repository.find_tokens(session, chunk)
                views = await read_token_views(session, tokens, now)
                await self._note_seen(session, tokens)
            for token in tokens:
                view = views.get(token.token_id)
                if view is not None:
                    self._offer(token.token_id, view, token.status)

    async def _note_seen(self, session: AsyncSession, tokens: Sequence[TokenRow]) -> None:
        """A watcher is not abandoning: its PENDING tokens count as asked about."""
        for token in tokens:
            if token.status == TokenStatus.PENDING:
                # Loaded by read_token_views: the session's identity map answers, not SQL.
                schedule = await repository.get_schedule(session, token.schedule_id)
                self._seen.note(token.token_id, schedule)

    def _status_changed(self, token_id: str, status: TokenStatus) -> bool:
        """Whether a watcher of the token needs a fresh view: its status changed, or it
        was watching before the token was placed in line."""
        return any(w.status != status or not w.placed for w in self._watchers.get(token_id, ()))

    def _offer(self, token_id: str, view: TokenView, status: TokenStatus) -> None:
        for watcher in self._watchers.get(token_id, ()):
            shown = (watcher.latest.token, watcher.latest.opens_at)
            if watcher.status != status or shown != (view.token, view.opens_at):
                watcher.offer(view, status)
