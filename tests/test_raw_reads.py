"""Reads outside the ORM (``raw_reads``): rows straight from the driver, one round trip each."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tools.system import create_postgres_database
from waiting_core import migrate
from waiting_core.database import Database
from waiting_core.raw_reads import raw_reads_for


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
    growth: the services' pools and the plain-SQL reads all force custom plans."""
    database_url = create_postgres_database(postgres_server)
    await asyncio.to_thread(migrate.upgrade, database_url)
    reads = raw_reads_for(database_url, pool_size=1)
    try:
        ((mode,),) = await reads.fetch("SHOW plan_cache_mode", [])
    finally:
        await reads.stop()
    async with Database(database_url) as database, database.single_read() as session:
        session_mode = (await session.execute(text("SHOW plan_cache_mode"))).scalar()
    assert mode == session_mode == "force_custom_plan"
