"""Reads outside the ORM (``raw_reads``): rows straight from the driver, one round trip each."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tools.system import create_postgres_database
from waiting_core import migrate, repository
from waiting_core.database import Database
from waiting_core.domain import NewToken
from waiting_core.held_tokens import Held, HeldTokens
from waiting_core.raw_reads import POSTGRES_SESSION_SETTINGS, Row, raw_reads_for

MOMENT = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


async def test_a_read_returns_its_rows(database_url: str) -> None:
    reads = raw_reads_for(database_url)
    sql = "SELECT ?, COUNT(*) FROM tokens WHERE token_id = ?"
    if not database_url.startswith("sqlite"):
        sql = "SELECT $1::text, COUNT(*) FROM tokens WHERE token_id = $2"
    try:
        rows = await reads.fetch(sql, ["asked", "no-such-token"])
    finally:
        await reads.stop()
    assert [tuple(row) for row in rows] == [("asked", 0)]


async def test_a_pooled_postgres_read_makes_no_second_round_trip(postgres_server: str) -> None:
    """Giving a PostgreSQL connection back to the pool runs no reset query: the last
    statement its server process ran is the read itself. (SQLite reads have no pool.)"""
    database_url = create_postgres_database(postgres_server)
    reads = raw_reads_for(database_url, pool_size=1)
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    observer = await asyncpg.connect(dsn)
    try:
        ((pid,),) = await reads.fetch("SELECT pg_backend_pid()", [])
        last = await observer.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await observer.close()
        await reads.stop()
    assert last == "SELECT pg_backend_pid()"


async def test_every_postgres_connection_plans_each_statement_for_its_values(
    postgres_server: str,
) -> None:
    """No generic plan made while ``tokens`` was tiny (a sequential scan) outlives the table's
    growth, and no short statement starts parallel workers or JIT: the services' pools and
    the plain-SQL reads all run with the same session settings."""
    database_url = create_postgres_database(postgres_server)
    await asyncio.to_thread(migrate.upgrade, database_url)
    names = sorted(POSTGRES_SESSION_SETTINGS)
    reads = raw_reads_for(database_url, pool_size=1)
    try:
        pooled = [(await reads.fetch(f"SHOW {name}", []))[0][0] for name in names]
    finally:
        await reads.stop()
    async with Database(database_url) as database, database.single_read() as session:
        orm = [(await session.execute(text(f"SHOW {name}"))).scalar() for name in names]
    assert pooled == orm == [POSTGRES_SESSION_SETTINGS[name] for name in names]
    assert POSTGRES_SESSION_SETTINGS["plan_cache_mode"] == "force_custom_plan"
    assert POSTGRES_SESSION_SETTINGS["max_parallel_workers_per_gather"] == "0"


async def test_many_key_reads_probe_the_index_of_a_table_never_analysed(
    postgres_server: str,
) -> None:
    """A settle of a few hundred newcomers, and the issue path's read of as many pairs, look
    each key up in an index even while ``tokens`` has rows but no statistics (a new sale's
    first minutes). Written as plain joins, they were a merge join of two whole-table scans:
    35 ms each at 30,000 tokens."""
    database_url = create_postgres_database(postgres_server)
    await asyncio.to_thread(migrate.upgrade, database_url)
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn, server_settings=POSTGRES_SESSION_SETTINGS)
    try:
        await _tokens_without_statistics(connection, schedule_id=1, count=20_000)
        keys = 300
        newcomers = [NewToken(f"new-{n}", f"newcomer-{n}", 1, MOMENT) for n in range(keys)]
        async with Database(database_url) as database, database.transaction() as session:
            schedules = await repository.lock_schedule_states(session, [1])
            placement = await repository.place_new_tokens(session, schedules, newcomers)
            settle_scans = _verdict(*(await session.execute(text(_SCANS))).one())
        async with connection.transaction():
            held = await HeldTokens(_OnConnection(connection, database_url)).held(
                [(1, f"user-{n}") for n in range(0, 20_000, 20_000 // keys)]
            )
            ((seq_scans, index_scans),) = await connection.fetch(_SCANS)
            held_scans = _verdict(seq_scans, index_scans)
    finally:
        await connection.close()
    assert len(placement.placed) == keys
    assert set(held.values()) == {Held(tokens=1, live=True)}
    assert (settle_scans, held_scans) == ("index probes only", "index probes only")


async def _tokens_without_statistics(
    connection: asyncpg.Connection, schedule_id: int, count: int
) -> None:
    await connection.execute("ALTER TABLE tokens SET (autovacuum_enabled = off)")
    await connection.execute(
        "INSERT INTO schedules (schedule_id, capacity, active_ttl_seconds, pending_ttl_seconds,"
        " admit_rate_per_second, last_seq, head_seq, active_count, pending_count,"
        " admitted_total) VALUES ($1, 0, 60, 60, 0, $2, 0, 0, $2, 0)",
        schedule_id,
        count,
    )
    await connection.execute(
        "INSERT INTO tokens (token_id, user_id, schedule_id, seq, status, issued_at,"
        " last_seen_at) SELECT 'old-' || n, 'user-' || n, $1, n + 1, 'PENDING', now(), now()"
        " FROM generate_series(0, $2 - 1) AS n",
        schedule_id,
        count,
    )
    never = await connection.fetchval(
        "SELECT last_analyze IS NULL AND last_autoanalyze IS NULL FROM pg_stat_user_tables"
        " WHERE relname = 'tokens'"
    )
    assert never


# How the current transaction has read ``tokens`` so far.
_SCANS = "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'tokens'"


def _verdict(seq_scans: int, index_scans: int) -> str:
    if seq_scans == 0 and index_scans > 0:
        return "index probes only"
    return f"{seq_scans} sequential scans, {index_scans} index scans"


class _OnConnection:
    """``RawReads`` on one given connection, inside the caller's transaction."""

    def __init__(self, connection: asyncpg.Connection, database_url: str) -> None:
        self._connection = connection
        self.dialect = make_url(database_url).get_dialect()()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        return [tuple(record) for record in await self._connection.fetch(sql, *params)]
