"""The issue path's one read: what each (schedule, user) already holds.

IssueToken needs, per caller, how many tokens the user has had in the schedule (the id's
generation) and whether one of them is live (I5). That is one indexed statement, run once
per group of concurrent calls, outside the ORM (``raw_reads``): its fixed cost is paid by
every issue.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from waiting_core.domain import TokenStatus
from waiting_core.raw_reads import RawReads, Row

Pair = tuple[int, str]  # (schedule_id, user_id)

_LIVE = frozenset(status.value for status in TokenStatus if status.is_live)


@dataclass(frozen=True, slots=True)
class Held:
    """What one user holds in one schedule."""

    tokens: int = 0  # live or ended: the next token's generation
    live: bool = False


class HeldTokens:
    """``held(pairs)``: what each (schedule, user) holds, in one statement."""

    # SQLite: one statement for any number of pairs (json_each), so its statement cache keeps
    # it; both IN lists are still looked up in ix_tokens_user.
    _SQLITE = (
        "SELECT schedule_id, user_id, status FROM tokens "
        "WHERE schedule_id IN (SELECT value FROM json_each(?)) "
        "AND user_id IN (SELECT value FROM json_each(?))"
    )
    # PostgreSQL: one index probe per pair on both columns of ix_tokens_user, whatever the
    # planner's statistics say (``raw_reads``: one probe per key). With both columns as ``= ANY``
    # lists, PostgreSQL 15 scans all of a schedule's tokens when it has no statistics of it
    # yet (a new sale), and a plain join on ``unnest`` can become a merge join over the table.
    _POSTGRES = (
        "SELECT k.schedule_id, k.user_id, t.status "
        "FROM unnest($1::bigint[], $2::varchar[]) AS k(schedule_id, user_id) "
        "CROSS JOIN LATERAL (SELECT status FROM tokens WHERE tokens.schedule_id = k.schedule_id "
        "AND tokens.user_id = k.user_id OFFSET 0) AS t"
    )

    def __init__(self, reads: RawReads) -> None:
        self._reads = reads
        self._sqlite = reads.dialect.name == "sqlite"

    async def held(self, pairs: Sequence[Pair]) -> dict[Pair, Held]:
        """What each pair holds."""
        pairs = list(dict.fromkeys(pairs))  # a pair asked twice is probed (and counted) once
        if not pairs:
            return {}
        if self._sqlite:
            schedules = sorted({s for s, _ in pairs})
            users = sorted({u for _, u in pairs})
            params: tuple[object, ...] = (json.dumps(schedules), json.dumps(users))
            rows = await self._reads.fetch(self._SQLITE, params)
        else:
            params = ([s for s, _ in pairs], [u for _, u in pairs])
            rows = await self._reads.fetch(self._POSTGRES, params)
        return _tally(pairs, rows)


def _tally(pairs: Sequence[Pair], rows: Iterable[Row]) -> dict[Pair, Held]:
    """Count each asked pair's rows (SQLite's IN lists also match the cross pairs: dropped)."""
    counts = dict.fromkeys(pairs, 0)
    live: set[Pair] = set()
    for schedule_id, user_id, status in rows:
        pair = (schedule_id, user_id)
        if pair in counts:
            counts[pair] += 1
            if status in _LIVE:
                live.add(pair)
    return {pair: Held(count, pair in live) for pair, count in counts.items()}
