"""The SQLite writer: a whole transaction per call, on a connection and thread of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from waiting_core.sqlite_writer import SqliteWriter


async def test_a_failed_transaction_leaves_nothing_and_the_next_one_runs(tmp_path: Path) -> None:
    path = tmp_path / "writer.sqlite3"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
    writer = SqliteWriter(str(path))
    await writer.start()

    def insert_then_fail(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("the work failed")

    try:
        with pytest.raises(RuntimeError):
            await writer.run(insert_then_fail)
        await writer.run(lambda connection: connection.execute("INSERT INTO t VALUES (2)"))
    finally:
        await writer.stop()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT x FROM t").fetchall() == [(2,)]
