"""SQL of the token store. Every function takes the caller's session and never commits.

Lock order, everywhere: the schedule row first, then its tokens. Issue, admission, release
and settings changes of one schedule therefore serialise on that row (I1), and sequence
numbers are handed out in commit order, which keeps admission FIFO (I2).

Partial-index predicates are written as SQL literals, not bound parameters, so that both
planners can match them to the indexes in ``models.py``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import Executable

from waiting_core import domain, prequeue
from waiting_core.domain import NewToken, ScheduleSettings, ScheduleUpdate, TokenStatus
from waiting_core.driver_sql import DialectSql, DriverSql, driver_sql
from waiting_core.errors import DomainError, TokenNotFound
from waiting_core.models import (
    AnyToken,
    OutboxEvent,
    OutboxRow,
    ScheduleRow,
    ServiceSecretRow,
    SigningKeyRow,
    TokenRecord,
    TokenRow,
    departed_predicate,
    live_predicate,
)
from waiting_core.prequeue import PrequeueOrder
from waiting_core.raw_reads import converted

_PENDING: ColumnElement[str] = literal_column("'PENDING'")
_ACTIVE: ColumnElement[str] = literal_column("'ACTIVE'")
TOKENS = cast(Table, TokenRow.__table__)  # for Core statements on the hot paths
_OUTBOX = cast(Table, OutboxRow.__table__)
_SIGNING_KEYS = cast(Table, SigningKeyRow.__table__)


async def _core(session: AsyncSession, stmt: Executable, params: Any = None) -> Result[Any]:
    """Run a statement that needs no ORM objects on the session's connection (in its
    transaction): it skips the ORM's execute (compile state, identity map, unit of work),
    which costs about as much again as a short statement on the settle path.

    There is no autoflush: use it only for statements that do not depend on changes still
    pending in the session. (The settle path changes tokens with UPDATE statements; only
    the locked schedule rows change in memory until the commit.)"""
    connection = await session.connection()
    return await connection.execute(stmt, params)


_LIVE = live_predicate("tokens.")
_DEPARTED = departed_predicate("tokens.")


@dataclass(frozen=True, slots=True)
class Release:
    """What a complete or cancel did: the token after it, and whether a slot was freed."""

    token: AnyToken
    previous: TokenStatus
    changed: bool
    freed_slot: bool


# --- schedules ---------------------------------------------------------------------------


async def get_schedule(session: AsyncSession, schedule_id: int) -> ScheduleRow | None:
    """The schedule's row, or None when it was never configured nor used."""
    return await session.get(ScheduleRow, schedule_id)


async def lock_schedule(session: AsyncSession, schedule_id: int) -> ScheduleRow:
    """Lock the schedule's row for this transaction, creating it with defaults if missing."""
    (row,) = await lock_schedules(session, [schedule_id])
    return row


async def lock_schedules(session: AsyncSession, schedule_ids: Sequence[int]) -> list[ScheduleRow]:
    """Lock the schedules' rows in id order (the one lock order), creating missing ones."""
    return await _lock_creating_missing(
        session, schedule_ids, lambda ids: _select_many_for_update(session, ids)
    )


async def _lock_creating_missing(
    session: AsyncSession,
    schedule_ids: Sequence[int],
    lock: Callable[[Sequence[int]], Awaitable[list[ScheduleRow]]],
) -> list[ScheduleRow]:
    """``lock`` the schedules' rows, in id order, creating those that are missing: they are
    inserted (which locks them) and read, the others are not read again."""
    ids = sorted(set(schedule_ids))
    rows = await lock(ids)
    missing = sorted(set(ids) - {row.schedule_id for row in rows})
    if not missing:
        return rows
    await _insert_default_schedules(session, missing)
    return sorted([*rows, *await lock(missing)], key=_schedule_id)


def _schedule_id(row: ScheduleRow) -> int:
    return row.schedule_id


async def _select_many_for_update(session: AsyncSession, ids: Sequence[int]) -> list[ScheduleRow]:
    stmt = (
        select(ScheduleRow)
        .where(ScheduleRow.schedule_id.in_(ids))
        .order_by(ScheduleRow.schedule_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(stmt)).scalars().all())


async def _insert_default_schedules(session: AsyncSession, schedule_ids: Sequence[int]) -> None:
    """Create the schedules with default settings; existing ones stay. The rows go as the
    parameters of one constant statement, so it is compiled once per process: a VALUES list
    built into the statement was compiled anew for every count of new schedules, and with
    tokens spread over many schedules that compilation was a sixth of the activator's CPU."""
    rows = []
    for schedule_id in schedule_ids:
        defaults = ScheduleSettings(schedule_id)
        rows.append(
            {
                "schedule_id": schedule_id,
                "capacity": defaults.capacity,
                "active_ttl_seconds": defaults.active_ttl_seconds,
                "pending_ttl_seconds": defaults.pending_ttl_seconds,
                "admit_rate_per_second": defaults.admit_rate_per_second,
                "last_seq": 0,
                "head_seq": 0,
                "active_count": 0,
                "pending_count": 0,
                "admitted_total": 0,
                "rate_allowance": 0.0,
                "admit_rate_estimate": 0.0,
            }
        )
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(insert(ScheduleRow).on_conflict_do_nothing(), rows)


_SCHEDULES = cast(Table, ScheduleRow.__table__)
_SCHEDULE_COLUMNS = list(_SCHEDULES.columns)
_STATE_COLUMNS = [column for column in _SCHEDULE_COLUMNS if column.key != "schedule_id"]
_SCHEDULE_LIST = ", ".join(column.name for column in _SCHEDULE_COLUMNS)
_LOCK_STATES = DialectSql(
    sqlite=f"SELECT {_SCHEDULE_LIST} FROM schedules"  # noqa: S608 - names from the model
    " WHERE schedule_id IN (SELECT value FROM json_each(?)) ORDER BY schedule_id",
    postgresql=f"SELECT {_SCHEDULE_LIST} FROM schedules"  # noqa: S608 - names from the model
    " WHERE schedule_id = ANY($1::bigint[]) ORDER BY schedule_id FOR UPDATE",
)
_READ_STATES = DialectSql(
    sqlite=_LOCK_STATES.sqlite,  # SQLite locks the whole file, not rows
    postgresql=_LOCK_STATES.postgresql.removesuffix(" FOR UPDATE"),
)
_STORE_STATES = DialectSql(
    sqlite="UPDATE schedules SET "  # noqa: S608 - names from the model
    + ", ".join(f"{column.name} = ?" for column in _STATE_COLUMNS)
    + " WHERE schedule_id = ?",
    postgresql="UPDATE schedules SET "  # noqa: S608 - names from the model
    + ", ".join(f"{column.name} = ${n}" for n, column in enumerate(_STATE_COLUMNS, 1))
    + f" WHERE schedule_id = ${len(_STATE_COLUMNS) + 1}",
)


async def lock_schedule_states(
    session: AsyncSession, schedule_ids: Sequence[int]
) -> list[ScheduleRow]:
    """Lock the schedules' rows in id order (the one lock order), creating missing ones,
    and read them on the driver (``driver_sql``) as rows outside the session: the settle
    changes them in memory and ``store_schedule_states`` writes them back before the
    commit, in one statement, instead of the ORM's identity map and flush."""
    driver = await driver_sql(session)
    return await _lock_creating_missing(
        session, schedule_ids, lambda ids: _select_states(driver, ids)
    )


async def read_schedule_states(
    session: AsyncSession, schedule_ids: Sequence[int]
) -> list[ScheduleRow]:
    """The schedules' rows as they are, unlocked (those that exist), in id order: what a
    settle expects to find before it takes its locks."""
    return await _select_states(await driver_sql(session), sorted(set(schedule_ids)), _READ_STATES)


async def _select_states(
    driver: DriverSql, ids: Sequence[int], statement: DialectSql = _LOCK_STATES
) -> list[ScheduleRow]:
    columns = [(column.key, driver.result(column)) for column in _SCHEDULE_COLUMNS]
    return [
        ScheduleRow(**converted(columns, row))
        for row in await driver.fetch(statement, driver.values(ids))
    ]


async def store_schedule_states(session: AsyncSession, schedules: Sequence[ScheduleRow]) -> None:
    """Write the rows ``lock_schedule_states`` gave back, every column but the id (the
    rows are locked, so the columns nobody changed hold what they held)."""
    driver = await driver_sql(session)
    binds = [driver.bind(column) for column in _STATE_COLUMNS]
    await driver.execute_many(
        _STORE_STATES,
        [
            [
                *(
                    None if value is None else bind(value)
                    for bind, value in zip(
                        binds, (getattr(s, column.key) for column in _STATE_COLUMNS), strict=True
                    )
                ),
                s.schedule_id,
            ]
            for s in schedules
        ],
    )


def settings_of(row: ScheduleRow | None, schedule_id: int) -> ScheduleSettings:
    """The schedule's settings, or the defaults when it has no row."""
    if row is None:
        return ScheduleSettings(schedule_id)
    return ScheduleSettings(
        schedule_id=row.schedule_id,
        capacity=row.capacity,
        active_ttl_seconds=row.active_ttl_seconds,
        pending_ttl_seconds=row.pending_ttl_seconds,
        admit_rate_per_second=row.admit_rate_per_second,
        opens_at=row.opens_at,
        prequeue_order=PrequeueOrder(row.prequeue_order),
    )


async def apply_settings(
    session: AsyncSession, update: ScheduleUpdate, now: datetime
) -> tuple[ScheduleSettings, ScheduleSettings]:
    """Apply the update under the schedule's lock; return the settings before and after."""
    row = await lock_schedule(session, update.schedule_id)
    previous = settings_of(row, update.schedule_id)
    settings = update.applied_to(previous)
    prequeue.check_opening_change(
        (previous.opens_at, previous.prequeue_order),
        (settings.opens_at, settings.prequeue_order),
        now=now,
        opened=prequeue.has_opened(row.opens_at, row.drawn_at, row.last_seq > 0, now),
    )
    if not domain.abandons(previous.pending_ttl_seconds) and domain.abandons(
        settings.pending_ttl_seconds
    ):
        row.abandonment_since = now
    row.capacity = settings.capacity
    row.active_ttl_seconds = settings.active_ttl_seconds
    row.pending_ttl_seconds = settings.pending_ttl_seconds
    row.admit_rate_per_second = settings.admit_rate_per_second
    row.prequeue_order = settings.prequeue_order.value
    if settings.opens_at != previous.opens_at:
        # Cleared before the opening: the sale opens now, and the cohort is still drawn.
        row.opens_at = settings.opens_at or now
        row.prequeue_seed = row.prequeue_seed or prequeue.new_seed()
    return previous, settings_of(row, update.schedule_id)


# --- tokens ------------------------------------------------------------------------------


async def find_token(session: AsyncSession, token_id: str) -> TokenRow | None:
    """The token with this id, or None."""
    return await session.get(TokenRow, token_id, populate_existing=True)


async def get_token(session: AsyncSession, token_id: str) -> TokenRow:
    """The token with this id; TokenNotFound otherwise."""
    token = await find_token(session, token_id)
    if token is None:
        raise TokenNotFound(token_id)
    return token


async def users_tokens(
    session: AsyncSession, pairs: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], list[TokenRow]]:
    """Every token, live or ended, of each (schedule, user), in one statement: IssueToken
    returns the live one, or derives the next id from how many there were."""
    found: dict[tuple[int, str], list[TokenRow]] = {pair: [] for pair in pairs}
    if not pairs:
        return found
    if session.get_bind().dialect.name == "postgresql":  # one probe per pair (held_tokens)
        schedules, users = _pair_arrays(pairs)
        statement, params = _USERS_TOKENS_BY_PAIR, {"schedules": schedules, "users": users}
    else:
        statement, params = _USERS_TOKENS, _pair_params(pairs)
    for token in (await session.execute(statement, params)).scalars():
        mine = found.get((token.schedule_id, token.user_id))
        if mine is not None:
            mine.append(token)
    return found


def _pair_arrays(pairs: Iterable[tuple[int, str]]) -> tuple[list[int], list[str]]:
    """The distinct (schedule, user) pairs as two parallel lists, for a join on
    ``unnest(schedules, users)``: one index probe per pair."""
    distinct = list(dict.fromkeys(pairs))
    return [schedule for schedule, _ in distinct], [user for _, user in distinct]


def _pair_params(pairs: Iterable[tuple[int, str]]) -> dict[str, Any]:
    """Bind values of a (schedule, user) lookup: both columns IN lists, so that SQLite uses
    ix_tokens_user (a row-value IN makes it scan the table); callers drop the cross pairs."""
    pairs = list(pairs)
    return {
        "schedules": sorted({schedule for schedule, _ in pairs}),
        "users": sorted({user for _, user in pairs}),
    }


_IN_SCHEDULES = TokenRow.schedule_id.in_(bindparam("schedules", expanding=True))
_IN_USERS = TokenRow.user_id.in_(bindparam("users", expanding=True))
_USERS_TOKENS = select(TokenRow).where(_IN_SCHEDULES, _IN_USERS)
_PAIRS = (
    func.unnest(
        bindparam("schedules", type_=ARRAY(BigInteger)), bindparam("users", type_=ARRAY(String))
    )
    .table_valued("schedule_id", "user_id")
    .render_derived(name="pairs")
)
_USERS_TOKENS_BY_PAIR = select(TokenRow).join(
    _PAIRS,
    and_(TokenRow.schedule_id == _PAIRS.c.schedule_id, TokenRow.user_id == _PAIRS.c.user_id),
)
# The newcomers' ids already written, and their users' tokens (live ones hold a place): one
# statement, two index lookups (primary key, ix_tokens_user). On the driver (``driver_sql``).
_WRITTEN_OR_HOLDING = DialectSql(
    sqlite="SELECT token_id, schedule_id, user_id, status FROM tokens"
    " WHERE token_id IN (SELECT value FROM json_each(?))"
    " OR (schedule_id IN (SELECT value FROM json_each(?))"
    " AND user_id IN (SELECT value FROM json_each(?)))",
    # One index probe per id and per pair, whatever the planner's statistics say (see
    # ``raw_reads``: one probe per key), and no OR, which PostgreSQL answers with a bitmap.
    postgresql="SELECT t.token_id, t.schedule_id, t.user_id, t.status"
    " FROM unnest($1::varchar[]) AS k(token_id) CROSS JOIN LATERAL"
    " (SELECT * FROM tokens WHERE tokens.token_id = k.token_id OFFSET 0) AS t"
    " UNION ALL SELECT t.token_id, t.schedule_id, t.user_id, t.status"
    " FROM unnest($2::bigint[], $3::varchar[]) AS k(schedule_id, user_id) CROSS JOIN LATERAL"
    " (SELECT * FROM tokens WHERE tokens.schedule_id = k.schedule_id"
    " AND tokens.user_id = k.user_id OFFSET 0) AS t",
)
# The placed tokens: SQLite runs the insert once per row; PostgreSQL inserts them all in one
# statement, one array per column (one plan and one execution for the whole batch).
_INSERT_PLACED = DialectSql(
    sqlite="INSERT INTO tokens (token_id, user_id, schedule_id, seq, status, issued_at,"
    " last_seen_at, draw_key, activated_at, expires_at, admission_pass)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    postgresql="INSERT INTO tokens (token_id, user_id, schedule_id, seq, status, issued_at,"
    " last_seen_at, draw_key, activated_at, expires_at, admission_pass)"
    " SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::bigint[], $4::bigint[],"
    " $5::varchar[], $6::timestamptz[], $7::timestamptz[], $8::bytea[], $9::timestamptz[],"
    " $10::timestamptz[], $11::text[])",
)
_PLACED_COLUMNS = [  # the insert's columns, in its order
    TOKENS.c[name]
    for name in (
        "token_id",
        "user_id",
        "schedule_id",
        "seq",
        "status",
        "issued_at",
        "last_seen_at",
        "draw_key",
        "activated_at",
        "expires_at",
        "admission_pass",
    )
]
_LIVE_VALUES = frozenset(status.value for status in TokenStatus if status.is_live)


@dataclass(frozen=True, slots=True)
class AdmitOnArrival:
    """Newcomers admitted as they are placed: up to ``limits[schedule_id]`` of a schedule
    (only one whose line is empty, so they are the oldest waiting), ACTIVE from ``now``,
    with their passes minted by ``signer``."""

    limits: Mapping[int, int]
    now: datetime
    signer: PassSigner


@dataclass(frozen=True, slots=True)
class Placement:
    """The newcomers placed in line, and those of them admitted on arrival."""

    placed: list[NewToken]
    admitted: list[TokenRecord]


async def place_new_tokens(
    session: AsyncSession,
    schedules: Sequence[ScheduleRow],
    newcomers: Sequence[NewToken],
    on_arrival: AdmitOnArrival | None = None,
) -> Placement:
    """Append the new tokens to their locked schedules' lines, in the given (log) order, in
    one multi-row insert: PENDING, or ACTIVE with their pass for those ``on_arrival``
    admits (one statement instead of an insert, an update and a pass update).

    A token already written (the log was read again) is skipped, and so is one whose user
    already holds another live token of the schedule (I5).
    """
    placement = Placement([], [])
    if not newcomers:
        return placement
    driver = await driver_sql(session)
    pair_schedules, pair_users = _pair_arrays((t.schedule_id, t.user_id) for t in newcomers)
    written: set[str] = set()
    holding: set[tuple[int, str]] = set()
    for token_id, schedule_id, user_id, status in await driver.fetch(
        _WRITTEN_OR_HOLDING,
        driver.values([t.token_id for t in newcomers]),
        driver.values(pair_schedules),
        driver.values(pair_users),
    ):
        written.add(token_id)
        if status in _LIVE_VALUES:
            holding.add((schedule_id, user_id))
    by_id = {schedule.schedule_id: schedule for schedule in schedules}
    rows: list[dict[str, Any]] = []
    arrived: Counter[int] = Counter()
    for token in newcomers:
        pair = (token.schedule_id, token.user_id)
        if token.token_id in written or pair in holding:
            continue
        written.add(token.token_id)
        holding.add(pair)
        schedule = by_id[token.schedule_id]
        schedule.last_seq += 1
        row: dict[str, Any] = {
            "token_id": token.token_id,
            "user_id": token.user_id,
            "schedule_id": token.schedule_id,
            "seq": schedule.last_seq,
            "status": TokenStatus.PENDING,
            "issued_at": token.issued_at,
            "last_seen_at": token.issued_at,
            "draw_key": draw_key_of(schedule, token.token_id, token.issued_at),
            "activated_at": None,
            "expires_at": None,
            "admission_pass": None,
        }
        admitting = on_arrival if _admits_on_arrival(on_arrival, schedule, arrived) else None
        schedule.pending_count += 1  # in line; admitted on arrival, it is counted out at once
        if admitting is not None:
            placement.admitted.append(_admit_on_arrival(row, schedule, admitting))
            arrived[schedule.schedule_id] += 1
        placement.placed.append(token)
        rows.append(row)
    await driver.insert_rows(_INSERT_PLACED, _placed_values(driver, rows))
    if placement.admitted and on_arrival is not None:
        await _keep_key_published(driver, on_arrival.signer, placement.admitted)
    return placement


def _placed_values(driver: DriverSql, rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The placed tokens' rows as the insert's parameters, converted as their columns say.
    The rows share most of their timestamps (issued and seen at once, admitted together),
    so each distinct value is converted once."""
    binds = [_once_each(driver.bind(column)) for column in _PLACED_COLUMNS]
    return [
        [
            None if row[column.key] is None else bind(row[column.key])
            for column, bind in zip(_PLACED_COLUMNS, binds, strict=True)
        ]
        for row in rows
    ]


def _once_each(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``convert``, remembering what it gave for each distinct value."""
    done: dict[Any, Any] = {}

    def converted(value: Any) -> Any:
        if value not in done:
            done[value] = convert(value)
        return done[value]

    return converted


def _admits_on_arrival(
    on_arrival: AdmitOnArrival | None, schedule: ScheduleRow, arrived: Counter[int]
) -> bool:
    """Whether the schedule's next newcomer is admitted as it is placed: nobody waits
    before it (else ``admit_oldest`` takes them in order) and the limit is not reached."""
    if on_arrival is None or schedule.pending_count > 0:
        return False
    return arrived[schedule.schedule_id] < on_arrival.limits.get(schedule.schedule_id, 0)


def _admit_on_arrival(
    row: dict[str, Any], schedule: ScheduleRow, on_arrival: AdmitOnArrival
) -> TokenRecord:
    """Make the row to insert ACTIVE, with its pass; count it in the schedule's row."""
    token = TokenRecord(**row)
    activate(token, schedule, on_arrival.now)
    token.admission_pass = on_arrival.signer.mint(token)
    for column in ("status", "activated_at", "expires_at", "admission_pass"):
        row[column] = getattr(token, column)
    _count_admitted(schedule, token, moves_head=True)
    return token


def _count_admitted(schedule: ScheduleRow, token: AnyToken, *, moves_head: bool) -> None:
    """Count a waiting token's admission in its locked schedule's row; ``moves_head``
    unless a renumbering is to set the head (a shuffled line's cohort)."""
    if moves_head:
        schedule.head_seq = max(schedule.head_seq, token.seq)
    schedule.active_count += 1
    schedule.pending_count -= 1
    schedule.admitted_total += 1


def draw_key_of(schedule: ScheduleRow, token_id: str, issued_at: datetime) -> bytes | None:
    """The draw key of a token placed in the schedule's line now (prequeue.cohort_key);
    None once the line was drawn."""
    if schedule.drawn_at is not None:
        return None
    order = PrequeueOrder(schedule.prequeue_order)
    return prequeue.cohort_key(
        schedule.opens_at, schedule.prequeue_seed, order, token_id, issued_at
    )


async def positions_in_line(session: AsyncSession, tokens: Sequence[AnyToken]) -> dict[str, int]:
    """Positions of many tokens (0 if not pending), one departed-range query per schedule.

    Loads each schedule's row once; later ``get_schedule`` calls in the session hit the
    identity map.
    """
    by_schedule: dict[int, list[AnyToken]] = {}
    for token in tokens:
        by_schedule.setdefault(token.schedule_id, []).append(token)
    positions: dict[str, int] = {}
    for schedule_id, members in by_schedule.items():
        schedule = await get_schedule(session, schedule_id)
        head = schedule.head_seq if schedule is not None else 0
        positions |= await pending_positions(session, schedule_id, head, members)
    return positions


async def pending_positions(
    session: AsyncSession, schedule_id: int, head_seq: int, tokens: Sequence[AnyToken]
) -> dict[str, int]:
    """Positions of many tokens of one schedule with a single range query (0 if not pending)."""
    pending = [t for t in tokens if t.status == TokenStatus.PENDING]
    last = max((t.seq for t in pending), default=head_seq)
    departed = await departed_seqs(session, schedule_id, head_seq, last) if pending else []
    return {
        t.token_id: domain.pending_position(t.seq, head_seq, bisect.bisect_left(departed, t.seq))
        if t.status == TokenStatus.PENDING
        else 0
        for t in tokens
    }


async def admit_oldest(
    session: AsyncSession,
    limits: Mapping[ScheduleRow, int],
    now: datetime,
    signer: Callable[[], Awaitable[PassSigner]],
    by_draw: frozenset[int] = frozenset(),
) -> list[TokenRecord]:
    """Turn the oldest PENDING tokens of each locked schedule ACTIVE, as many as its limit,
    each with its pass (minted by the signer, fetched only if anybody is admitted). For the
    schedules in ``by_draw`` (a shuffled sale opening, not renumbered yet) "oldest" means
    first by draw key (the cohort), then, if the cohort falls short, by issue order.

    A read of the oldest (a UNION ALL of one index range per schedule), then one update
    that admits them and stores their passes (one per MINT_CHUNK tokens), so each row is
    written once. The schedule locks keep anybody else from changing those tokens
    in between; the update still matches only PENDING rows, so a token is activated at
    most once (I4).
    """
    wanted = {schedule: limit for schedule, limit in limits.items() if limit > 0}
    if not wanted:
        return []
    driver = await driver_sql(session)
    picked = await _oldest_pending(driver, wanted, by_draw)
    if not picked:
        return []
    by_id = {schedule.schedule_id: schedule for schedule in wanted}
    for token in picked:
        activate(token, by_id[token.schedule_id], now)
    minter = await signer()
    await _mint_and_store(driver, minter, picked, now)
    for token in picked:
        _count_admitted(
            by_id[token.schedule_id], token, moves_head=token.schedule_id not in by_draw
        )
    await _keep_key_published(driver, minter, picked)
    return picked


# Admissions bigger than this (a sale's opening, a wave of freed slots) are minted and
# stored in chunks of this size, so that signing one chunk overlaps storing the previous.
MINT_CHUNK = 200


async def _mint_and_store(
    driver: DriverSql, minter: PassSigner, tokens: Sequence[TokenRecord], now: datetime
) -> None:
    """Mint the tokens' passes and store their admissions.

    Signing costs about 40 µs a pass, and PostgreSQL's write of an admitted token (a new
    row version and its index entries, most of them full-page images in the WAL) about
    85 µs. One after the other, the thousand admissions of a sale's opening took both in
    full. Cut into chunks, a worker thread mints chunk k+1 while the server writes chunk
    k, so the two overlap on the machine's cores. SQLite writes in this process, holding
    the GIL between rows, so there the thread only contended with it (first admissions of
    a million-token pre-queue: 141-153 ms in one go, 188 ms in chunks): it mints and
    stores in one go, as a small admission does everywhere.
    """
    if driver.is_sqlite or len(tokens) <= MINT_CHUNK:
        _mint_passes(minter, tokens)
        await _store_admissions(driver, tokens, now)
        return
    chunks = [tokens[i : i + MINT_CHUNK] for i in range(0, len(tokens), MINT_CHUNK)]
    _mint_passes(minter, chunks[0])
    for chunk, following in zip(chunks, [*chunks[1:], None], strict=True):
        minting = (
            asyncio.ensure_future(asyncio.to_thread(_mint_passes, minter, following))
            if following is not None
            else None
        )
        try:
            await _store_admissions(driver, chunk, now)
        finally:
            if minting is not None:
                await minting


def _mint_passes(minter: PassSigner, tokens: Sequence[TokenRecord]) -> None:
    for token in tokens:
        token.admission_pass = minter.mint(token)


async def oldest_pending(session: AsyncSession, limits: Mapping[int, int]) -> list[TokenRecord]:
    """The first PENDING tokens of each schedule in issue order, up to its limit, as they
    are now (no lock): those a settle would admit next in a line in issue order."""
    return await _oldest(await driver_sql(session), _OLDEST_BY_SEQ, limits)


async def _oldest_pending(
    driver: DriverSql, wanted: Mapping[ScheduleRow, int], by_draw: frozenset[int]
) -> list[TokenRecord]:
    """The tokens ``admit_oldest`` admits, in seq order (the cohort's by draw key first)."""
    picked = [
        *await _oldest(
            driver,
            _OLDEST_BY_DRAW_KEY,
            {s.schedule_id: n for s, n in wanted.items() if s.schedule_id in by_draw},
        ),
        *await _oldest(
            driver,
            _OLDEST_BY_SEQ,
            {s.schedule_id: n for s, n in wanted.items() if s.schedule_id not in by_draw},
        ),
    ]
    # A cohort smaller than the free slots: the others follow, in issue order.
    picked_of = Counter(token.schedule_id for token in picked)
    short = {
        schedule.schedule_id: limit - picked_of[schedule.schedule_id]
        for schedule, limit in wanted.items()
        if schedule.schedule_id in by_draw and picked_of[schedule.schedule_id] < limit
    }
    if short:
        # The cohort is still PENDING in the table, so read past it and skip it here.
        chosen = {token.token_id for token in picked}
        rest = {i: n + picked_of[i] for i, n in short.items()}
        followers: Counter[int] = Counter()
        for token in await _oldest(driver, _OLDEST_BY_SEQ, rest):
            if (
                token.token_id not in chosen
                and followers[token.schedule_id] < short[token.schedule_id]
            ):
                followers[token.schedule_id] += 1
                picked.append(token)
    return sorted(picked, key=lambda t: t.seq)


_TOKEN_COLUMNS = list(TOKENS.columns)
_TOKEN_LIST = ", ".join(column.name for column in _TOKEN_COLUMNS)


def _oldest_of(where: str, order: str) -> DialectSql:
    """The first PENDING tokens of a schedule's index range: on SQLite, of one schedule
    (schedule id, limit); on PostgreSQL, of each listed one (ids, limits), in one statement."""
    pick = (
        f"SELECT {_TOKEN_LIST} FROM tokens"  # noqa: S608 - names from the model
        f" WHERE schedule_id = {{id}} AND status = 'PENDING'{where} ORDER BY {order} LIMIT {{n}}"
    )
    each = pick.format(id="wanted.id", n="wanted.n")
    return DialectSql(
        sqlite=pick.format(id="?", n="?"),
        postgresql="SELECT picked.* FROM unnest($1::bigint[], $2::int[]) AS wanted(id, n)"  # noqa: S608
        f" CROSS JOIN LATERAL ({each}) AS picked",
    )


_OLDEST_BY_SEQ = _oldest_of("", "seq")  # ix_tokens_pending
_OLDEST_BY_DRAW_KEY = _oldest_of(" AND draw_key IS NOT NULL", "draw_key")  # ix_tokens_draw


async def _oldest(
    driver: DriverSql, statement: DialectSql, limits: Mapping[int, int]
) -> list[TokenRecord]:
    """The tokens ``statement`` picks, up to each schedule's limit."""
    if not limits:
        return []
    if driver.is_sqlite:  # in process: a statement per schedule costs no round trip
        rows = [row for i, n in limits.items() for row in await driver.fetch(statement, i, n)]
    else:
        rows = await driver.fetch(statement, list(limits), list(limits.values()))
    columns = [(column.key, driver.result(column)) for column in _TOKEN_COLUMNS]
    return [TokenRecord(**converted(columns, row)) for row in rows]


def activate(token: TokenRecord, schedule: ScheduleRow, now: datetime) -> None:
    """Make an admitted token ACTIVE from ``now`` for its schedule's active TTL."""
    token.status = TokenStatus.ACTIVE
    token.activated_at = now
    token.expires_at = now + timedelta(seconds=schedule.active_ttl_seconds)


async def _store_admissions(
    driver: DriverSql, tokens: Sequence[TokenRecord], now: datetime
) -> None:
    """Write the admitted tokens, passes included, in one statement (PostgreSQL) or one
    executemany (SQLite, in process). Each must still be PENDING: the schedule locks make
    that certain, and if it ever were not, the settle fails and is rolled back whole."""
    moment = driver.bind(TOKENS.c.activated_at)
    if driver.is_sqlite:
        stored = await driver.execute_many(
            _ADMIT,
            [(moment(now), moment(t.expires_at), t.admission_pass, t.token_id) for t in tokens],
        )
    else:
        admitted = await driver.fetch(
            _ADMIT,
            moment(now),
            [t.token_id for t in tokens],
            [moment(t.expires_at) for t in tokens],
            [t.admission_pass for t in tokens],
        )
        stored = len(admitted)
    if stored != len(tokens):
        raise RuntimeError(f"admitted {stored} of {len(tokens)} tokens: the line changed")


_ADMIT = DialectSql(
    sqlite="UPDATE tokens SET status = 'ACTIVE', activated_at = ?, expires_at = ?,"
    " admission_pass = ? WHERE token_id = ? AND status = 'PENDING'",
    postgresql="UPDATE tokens SET status = 'ACTIVE', activated_at = $1,"
    " expires_at = admitted.expires_at, admission_pass = admitted.pass"
    " FROM unnest($2::text[], $3::timestamptz[], $4::text[])"
    " AS admitted(token_id, expires_at, pass)"
    " WHERE tokens.token_id = admitted.token_id AND tokens.status = 'PENDING'"
    " RETURNING tokens.token_id",
)


# What a group of releases gives each request, and the events a group writes for them.
ReleaseResults = list[Release | DomainError]
# ``events_of(results, waiting)``: ``waiting`` holds the schedules someone still waits in
# after the group (see ``schedules_with_waiters``).
EventsOf = Callable[[Sequence[Release | DomainError], frozenset[int]], list[OutboxEvent]]


def apply_releases(
    requests: Sequence[tuple[str, TokenStatus]],
    tokens: Mapping[str, AnyToken],
    schedules: Mapping[int, ScheduleRow],
    now: datetime,
) -> list[Release | DomainError]:
    """Each request's Release, or the DomainError that belongs to it alone, in request
    order. Changes the tokens and their schedules' counts in memory; the caller writes them."""
    results: list[Release | DomainError] = []
    for token_id, target in requests:
        token = tokens.get(token_id)
        if token is None:
            results.append(TokenNotFound(token_id))
            continue
        try:
            results.append(_release(token, schedules[token.schedule_id], target, now))
        except DomainError as exc:
            results.append(exc)
    return results


def release_changes(
    results: Sequence[Release | DomainError], schedules: Mapping[int, ScheduleRow]
) -> tuple[list[AnyToken], list[ScheduleRow]]:
    """What ``apply_releases`` changed and the caller must write: the tokens that moved (each
    once), and the schedules whose counts changed."""
    tokens = {r.token.token_id: r.token for r in results if isinstance(r, Release) and r.changed}
    touched = {token.schedule_id for token in tokens.values()}
    return list(tokens.values()), [s for i, s in schedules.items() if i in touched]


def schedules_with_waiters(schedules: Mapping[int, ScheduleRow]) -> frozenset[int]:
    """The schedules whose line holds a PENDING token, read under their row locks.

    Only these have anyone to admit into a freed slot. A token still on its way through the
    log is placed later, under the same lock, and sees the freed slot then.
    """
    return frozenset(i for i, schedule in schedules.items() if schedule.pending_count > 0)


def _release(token: AnyToken, schedule: ScheduleRow, target: TokenStatus, now: datetime) -> Release:
    previous = token.status
    if not domain.check_release(previous, target):
        return Release(token=token, previous=previous, changed=False, freed_slot=False)
    was_active = previous == TokenStatus.ACTIVE
    token.status = target
    token.ended_at = now
    if was_active:
        schedule.active_count -= 1
    else:
        schedule.pending_count -= 1
    return Release(token=token, previous=previous, changed=True, freed_slot=was_active)


# --- outbox ------------------------------------------------------------------------------


async def oldest_outbox_events(
    session: AsyncSession, origin: str, limit: int, created_before: datetime | None = None
) -> list[OutboxEvent]:
    """Up to ``limit`` of ``origin``'s unpublished events, oldest first; with
    ``created_before``, only those written before it."""
    stmt = select(*_OUTBOX.c).where(_OUTBOX.c.origin == origin)
    if created_before is not None:
        stmt = stmt.where(_OUTBOX.c.created_at < created_before)
    rows = await _core(session, stmt.order_by(_OUTBOX.c.id).limit(limit))
    return [OutboxEvent(**row._mapping) for row in rows]


async def delete_outbox_events(session: AsyncSession, ids: Sequence[int]) -> None:
    """Drop published events; the outbox holds only what is still to be sent. One statement
    on the driver, with the ids as one parameter (``DELETE_OUTBOX``)."""
    if ids:
        driver = await driver_sql(session)
        await driver.fetch(DELETE_OUTBOX, driver.values(ids))


# --- sweeps ------------------------------------------------------------------------------


async def expire_due_active(
    session: AsyncSession, schedules: Sequence[ScheduleRow], now: datetime
) -> list[TokenRow]:
    """ACTIVE tokens of the locked schedules whose TTL ran out become EXPIRED (one statement)."""
    ids = [schedule.schedule_id for schedule in schedules if schedule.active_count > 0]
    if not ids:
        return []
    expired = await _expire_where(
        session,
        now,
        TokenRow.schedule_id.in_(ids),
        TokenRow.status == _ACTIVE,
        TokenRow.expires_at <= now,
    )
    _count_out(schedules, expired, "active_count")
    return expired


async def abandon_stale_pending(
    session: AsyncSession, schedules: Sequence[ScheduleRow], now: datetime
) -> list[TokenRow]:
    """PENDING tokens nobody asked about for their schedule's pending TTL become EXPIRED."""
    cutoffs = {
        schedule.schedule_id: cutoff
        for schedule in schedules
        if schedule.pending_count > 0
        and (
            cutoff := domain.stale_before(
                schedule.pending_ttl_seconds, schedule.abandonment_since, now
            )
        )
        is not None
    }
    if not cutoffs:
        return []
    stale = or_(
        *(
            (TokenRow.schedule_id == schedule_id) & (TokenRow.last_seen_at < cutoff)
            for schedule_id, cutoff in cutoffs.items()
        )
    )
    abandoned = await _expire_where(session, now, TokenRow.status == _PENDING, stale)
    _count_out(schedules, abandoned, "pending_count")
    return abandoned


async def _expire_where(
    session: AsyncSession, now: datetime, *conditions: ColumnElement[bool]
) -> list[TokenRow]:
    """The tokens matching ``conditions`` become EXPIRED, in one statement."""
    stmt = (
        update(TokenRow)
        .where(*conditions)
        .values(status=TokenStatus.EXPIRED, ended_at=now)
        .returning(TokenRow)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return list((await session.execute(stmt)).scalars().all())


def _count_out(schedules: Sequence[ScheduleRow], tokens: Sequence[TokenRow], counter: str) -> None:
    """Take the tokens that left off their schedule's ``counter``."""
    left = Counter(token.schedule_id for token in tokens)
    for schedule in schedules:
        if left[schedule.schedule_id]:
            setattr(schedule, counter, getattr(schedule, counter) - left[schedule.schedule_id])


@dataclass(frozen=True, slots=True)
class Deadlines:
    """A schedule's earliest ACTIVE ``expires_at`` and earliest PENDING ``last_seen_at``."""

    earliest_expiry: datetime | None = None
    earliest_seen: datetime | None = None


async def earliest_deadlines(
    session: AsyncSession, schedules: Sequence[ScheduleRow]
) -> dict[int, Deadlines]:
    """Each schedule's deadlines, in two grouped statements at most: expiries of schedules
    with ACTIVE tokens, and "seen" of those that abandon and have PENDING tokens."""
    with_active = [s.schedule_id for s in schedules if s.active_count > 0]
    abandoning = [
        s.schedule_id
        for s in schedules
        if domain.abandons(s.pending_ttl_seconds) and s.pending_count > 0
    ]
    driver = await driver_sql(session)
    expiries = await _earliest(driver, _EARLIEST_EXPIRY, with_active)
    seen = await _earliest(driver, _EARLIEST_SEEN, abandoning)
    return {
        s.schedule_id: Deadlines(expiries.get(s.schedule_id), seen.get(s.schedule_id))
        for s in schedules
    }


# Each listed schedule's earliest moment among its tokens in one status: a correlated
# subquery per schedule, each the first entry of an index range (MIN with GROUP BY would
# read every entry, and a schedule may hold a million ACTIVE tokens).
_EARLIEST_EXPIRY = DialectSql(  # ix_tokens_active_expiry
    sqlite="SELECT ids.id, (SELECT expires_at FROM tokens WHERE schedule_id = ids.id"
    " AND status = 'ACTIVE' ORDER BY expires_at LIMIT 1)"
    " FROM (SELECT value AS id FROM json_each(?)) AS ids",
    postgresql="SELECT ids.id, (SELECT expires_at FROM tokens WHERE schedule_id = ids.id"
    " AND status = 'ACTIVE' ORDER BY expires_at LIMIT 1)"
    " FROM unnest($1::bigint[]) AS ids(id)",
)
_EARLIEST_SEEN = DialectSql(  # ix_tokens_pending_seen
    sqlite="SELECT ids.id, (SELECT last_seen_at FROM tokens WHERE schedule_id = ids.id"
    " AND status = 'PENDING' ORDER BY last_seen_at LIMIT 1)"
    " FROM (SELECT value AS id FROM json_each(?)) AS ids",
    postgresql="SELECT ids.id, (SELECT last_seen_at FROM tokens WHERE schedule_id = ids.id"
    " AND status = 'PENDING' ORDER BY last_seen_at LIMIT 1)"
    " FROM unnest($1::bigint[]) AS ids(id)",
)


async def _earliest(
    driver: DriverSql, statement: DialectSql, schedule_ids: Sequence[int]
) -> dict[int, datetime]:
    """The moments ``statement`` reads for the schedules (absent: no such token)."""
    if not schedule_ids:
        return {}
    moment = driver.result(TOKENS.c.expires_at)  # UTCDateTime: an aware datetime
    return {
        schedule_id: value if moment is None else moment(value)
        for schedule_id, value in await driver.fetch(statement, driver.values(schedule_ids))
        if value is not None
    }


async def due_schedules(session: AsyncSession, now: datetime, limit: int) -> Sequence[int]:
    """Schedules whose next due moment has come, most overdue first (an index range)."""
    stmt = (
        select(ScheduleRow.schedule_id)
        .where(ScheduleRow.next_due_at <= now)
        .order_by(ScheduleRow.next_due_at)
        .limit(limit)
    )
    return (await session.execute(stmt)).scalars().all()


async def next_due_after(session: AsyncSession, now: datetime) -> datetime | None:
    """The first due moment still to come, of any schedule (the first index entry after now)."""
    stmt = (
        select(ScheduleRow.next_due_at)
        .where(ScheduleRow.next_due_at > now)
        .order_by(ScheduleRow.next_due_at)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def stalled_lines(session: AsyncSession) -> Sequence[int]:
    """Schedules with free slots and people waiting: the sweeper's slow safety net.

    Events and due moments keep every line moving; this catches one that nothing woke, for
    example after a settle failed and the event that asked for it was already committed.
    """
    stmt = select(ScheduleRow.schedule_id).where(
        (ScheduleRow.pending_count > 0) & (ScheduleRow.active_count < ScheduleRow.capacity)
    )
    return (await session.execute(stmt)).scalars().all()


async def touch_tokens(session: AsyncSession, token_ids: Sequence[str], now: datetime) -> None:
    """Mark PENDING tokens as asked about (live watchers keep their place)."""
    if token_ids:
        await session.execute(
            update(TokenRow)
            .where(TokenRow.token_id.in_(token_ids), TokenRow.status == _PENDING)
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )


async def find_tokens(session: AsyncSession, token_ids: Sequence[str]) -> Sequence[TokenRow]:
    """The tokens with these ids (missing ones are left out)."""
    if not token_ids:
        return []
    stmt = (
        select(TokenRow)
        .where(TokenRow.token_id.in_(token_ids))
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalars().all()


async def token_statuses(session: AsyncSession, token_ids: Sequence[str]) -> dict[str, TokenStatus]:
    """The status of each of these tokens (missing ones are left out), without loading rows."""
    if not token_ids:
        return {}
    stmt = select(TokenRow.token_id, TokenRow.status).where(TokenRow.token_id.in_(token_ids))
    return {row.token_id: row.status for row in (await session.execute(stmt)).all()}


async def departed_seqs(
    session: AsyncSession, schedule_id: int, after_seq: int, before_seq: int
) -> Sequence[int]:
    """Sequence numbers of tokens that left the line unadmitted, in (after, before)."""
    stmt = (
        select(TokenRow.seq)
        .where(
            TokenRow.schedule_id == schedule_id,
            TokenRow.seq > after_seq,
            TokenRow.seq < before_seq,
            _DEPARTED,
        )
        .order_by(TokenRow.seq)
    )
    return (await session.execute(stmt)).scalars().all()


# --- shared secrets ----------------------------------------------------------------------


async def shared_secret(session: AsyncSession, name: str, fresh: bytes) -> bytes:
    """The secret called ``name``; the first caller stores ``fresh``, everyone gets the same."""
    dialect = session.get_bind().dialect.name
    insert_ = pg_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(
        insert_(ServiceSecretRow).values(name=name, value=fresh).on_conflict_do_nothing()
    )
    stmt = select(ServiceSecretRow.value).where(ServiceSecretRow.name == name)
    return (await session.execute(stmt)).scalar_one()


async def signing_keys(session: AsyncSession) -> list[SigningKeyRow]:
    """Every admission-pass signing key, oldest first."""
    stmt = select(SigningKeyRow).order_by(SigningKeyRow.signs_from, SigningKeyRow.kid)
    return list((await session.execute(stmt)).scalars().all())


async def add_signing_key(session: AsyncSession, key: SigningKeyRow) -> None:
    """Store a new signing key."""
    session.add(key)
    await session.flush()


async def drop_signing_keys(session: AsyncSession, kids: Sequence[str]) -> None:
    """Forget keys that left the JWK Set for good."""
    if kids:
        await session.execute(delete(SigningKeyRow).where(SigningKeyRow.kid.in_(kids)))


class PassSigner(Protocol):
    """Mints admission passes with one key (``signing_keys.Signer``)."""

    @property
    def kid(self) -> str:
        """The signing key's id."""

    def mint(self, token: AnyToken) -> str:
        """The pass of an ACTIVE token."""

    @property
    def published_until(self) -> datetime | None:
        """The key's ``passes_until`` as last read (committed; it only ever grows)."""


# How far past the last pass's expiry a write of ``passes_until`` keeps the key published,
# so that the settles of the next seconds find it far enough already and write nothing.
KEEP_PUBLISHED_MARGIN = timedelta(seconds=10)


async def _keep_key_published(
    driver: DriverSql, signer: PassSigner, tokens: Sequence[AnyToken]
) -> None:
    """Keep the signing key published until the last of the tokens' passes expires: a
    statement only when the key's ``passes_until``, as last read, falls short of it (about
    once every KEEP_PUBLISHED_MARGIN, instead of a round trip every admitting settle)."""
    last_exp = max(token.expires_at for token in tokens if token.expires_at is not None)
    if signer.published_until is not None and signer.published_until >= last_exp:
        return
    until = last_exp + KEEP_PUBLISHED_MARGIN
    moment = driver.bind(_SIGNING_KEYS.c.passes_until)
    await driver.fetch(_KEEP_KEY_PUBLISHED, moment(until), signer.kid, moment(until))


_KEEP_KEY_PUBLISHED = DialectSql(
    sqlite="UPDATE signing_keys SET passes_until = ? WHERE kid = ?"
    " AND (passes_until IS NULL OR passes_until < ?)",
    postgresql="UPDATE signing_keys SET passes_until = $1 WHERE kid = $2"
    " AND (passes_until IS NULL OR passes_until < $3)",
)


# --- the pre-queue -----------------------------------------------------------------------

# Tokens renumbered per statement: each statement stays well inside the driver's command
# timeout (30 s), whatever the size of the line; all of them are one transaction. The
# activator runs SQLite's statements in its event loop's thread (sqlite_connections), so
# there a statement is kept short (about 0.1 s) and the loop gets a turn between them:
# status reads go on meanwhile.
RENUMBER_CHUNK = 50_000
RENUMBER_CHUNK_SQLITE = 5_000

_UPDATE_SEQ = (
    "UPDATE tokens SET seq = :next + ranked.place FROM ("
    " SELECT token_id, row_number() OVER (ORDER BY {order}) AS place FROM ("
    "  SELECT token_id, draw_key, seq FROM tokens"
    "  WHERE schedule_id = :schedule_id AND status = 'PENDING' AND {where}"
    "  ORDER BY {order} LIMIT :chunk) AS next_chunk"
    ") AS ranked WHERE tokens.token_id = ranked.token_id RETURNING tokens.{returned}"
)
# The cohort, by draw key after the last chunk's (an index range of ix_tokens_draw).
_RENUMBER_COHORT = text(
    _UPDATE_SEQ.format(
        order="draw_key", where="draw_key IS NOT NULL AND draw_key > :cursor", returned="draw_key"
    )
)
# Then the others still numbered before the line (renumbered ones move after it).
_RENUMBER_OTHERS = text(_UPDATE_SEQ.format(order="seq", where="seq <= :base", returned="seq"))


async def renumber_line(session: AsyncSession, schedule: ScheduleRow, now: datetime) -> int:
    """Put the locked schedule's PENDING tokens in their order after the opening: the cohort
    by draw key, then the others by issue order, numbered after every sequence number used
    so far (so no token that left the line counts, and positions stay O(1)), RENUMBER_CHUNK
    at a time, in the caller's transaction. Marks the schedule drawn; returns how many
    tokens were renumbered."""
    base = next_seq = schedule.last_seq
    sqlite = session.get_bind().dialect.name == "sqlite"
    chunk = RENUMBER_CHUNK_SQLITE if sqlite else RENUMBER_CHUNK
    mine = {"schedule_id": schedule.schedule_id, "chunk": chunk, "base": base}
    cursor = b""
    while True:
        params = {**mine, "next": next_seq, "cursor": cursor}
        keys = (await session.execute(_RENUMBER_COHORT, params)).scalars().all()
        next_seq += len(keys)
        if len(keys) < chunk:
            break
        cursor = max(keys)
        await asyncio.sleep(0)  # let other tasks run between statements
    while True:
        params = {**mine, "next": next_seq}
        done = len((await session.execute(_RENUMBER_OTHERS, params)).scalars().all())
        next_seq += done
        if done < chunk:
            break
        await asyncio.sleep(0)
    schedule.head_seq = base
    schedule.last_seq = next_seq
    schedule.drawn_at = now
    return next_seq - base


# --- the outbox ---------------------------------------------------------------------------


async def insert_outbox_rows(session: AsyncSession, rows: Sequence[OutboxEvent]) -> list[int]:
    """Insert outbox rows on the driver (``driver_sql``), in one batch; their new ids, in
    the rows' order."""
    if not rows:
        return []
    driver = await driver_sql(session)
    created_at = driver.bind(_OUTBOX.c.created_at)
    if driver.is_sqlite:
        await driver.execute_many(INSERT_OUTBOX, outbox_values(rows, created_at))
        ((last,),) = await driver.fetch(LAST_OUTBOX_ID)
        return sqlite_outbox_ids(last, len(rows))
    return [
        row_id for (row_id,) in await driver.fetch(INSERT_OUTBOX, *outbox_arrays(rows, created_at))
    ]


def outbox_values(
    rows: Sequence[OutboxEvent], created_at: Callable[[Any], Any]
) -> list[tuple[Any, ...]]:
    """The SQLite insert's parameters: one tuple per row (``created_at`` converts the time)."""
    return [
        (row.origin, row.topic, row.key, row.event_type, row.payload, created_at(row.created_at))
        for row in rows
    ]


def outbox_arrays(rows: Sequence[OutboxEvent], created_at: Callable[[Any], Any]) -> list[list[Any]]:
    """The PostgreSQL insert's parameters: one array per column."""
    return [
        [row.origin for row in rows],
        [row.topic for row in rows],
        [row.key for row in rows],
        [row.event_type for row in rows],
        [row.payload for row in rows],
        [created_at(row.created_at) for row in rows],
    ]


def sqlite_outbox_ids(last: int, count: int) -> list[int]:
    """The ids of the ``count`` outbox rows a SQLite transaction just inserted, given the
    table's last id: a write transaction holds the one write lock from BEGIN IMMEDIATE, and
    AUTOINCREMENT gives each row the last id + 1, so they are the last ``count``."""
    return list(range(last - count + 1, last + 1))


# The outbox insert, for every writer (the session's driver here, the release writers):
# on SQLite, an executemany whose ids are the last ones (``sqlite_outbox_ids``); on
# PostgreSQL, one statement that draws each row's id from the table's sequence, inserts the
# rows and returns their ids in the rows' order (by ordinality, not by RETURNING's order,
# which is not defined). The drawn ids are a materialised CTE, so the insert and the answer
# see the same ones: one round trip, where a draw and then an insert took two.
INSERT_OUTBOX = DialectSql(
    sqlite='INSERT INTO outbox (origin, topic, "key", event_type, payload, created_at)'
    " VALUES (?, ?, ?, ?, ?, ?)",
    postgresql="WITH new AS MATERIALIZED ("
    " SELECT nextval(pg_get_serial_sequence('outbox', 'id')) AS id, u.*"
    " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bytea[],"
    " $6::timestamptz[]) WITH ORDINALITY"
    " AS u(origin, topic, key, event_type, payload, created_at, n)"
    "), inserted AS ("
    " INSERT INTO outbox (id, origin, topic, key, event_type, payload, created_at)"
    " SELECT id, origin, topic, key, event_type, payload, created_at FROM new ORDER BY n"
    ") SELECT id FROM new ORDER BY n",
)
LAST_OUTBOX_ID = DialectSql(
    sqlite="SELECT seq FROM sqlite_sequence WHERE name = 'outbox'", postgresql=""
)
# Published rows, by id, for the relay (the session's driver here, the release writers).
DELETE_OUTBOX = DialectSql(
    sqlite="DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))",
    postgresql="DELETE FROM outbox WHERE id = ANY($1::bigint[])",
)
