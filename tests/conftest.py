"""Session fixtures: a real Kafka broker, real databases, and both services on port 0.

The broker and PostgreSQL are started by the project's own scripts when they are not already
reachable, and stopped at the end. Where one cannot be had, a local run skips the tests that
need it; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    System,
    create_postgres_database,
    running_system,
    settings_for,
)
from waiting_core import migrate

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str) -> None:
    """Fail in CI, skip elsewhere: a missing broker or database is never silently skipped."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(what)


def _run_script(args: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        unavailable(f"{what} failed to start:\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka 4 broker: KAFKA_BOOTSTRAP_SERVERS if given, else one started for the run."""
    given = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    port = int(os.environ.get("TEST_KAFKA_PORT", "19092"))
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_DATA_DIR": str(tmp_path_factory.mktemp("kafka")),
    }
    # The script refuses a port that another program (or an earlier run's broker) holds.
    _run_script(["scripts/kafka.sh", "start"], env, "the Kafka broker")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["scripts/kafka.sh", "stop"], cwd=ROOT, env=env, check=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Admin URL of a real PostgreSQL: TEST_POSTGRES_URL, else a cluster started for the run."""
    given = os.environ.get("TEST_POSTGRES_URL")
    if given:
        yield given
        return
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        unavailable("PostgreSQL is not installed (run: scripts/postgres.sh install)")
    port = int(os.environ.get("TEST_PG_PORT", "55433"))
    # The script keeps the cluster where its owner can reach it, whatever the checkout's folder.
    env = {k: v for k, v in os.environ.items() if k != "PG_DATA_DIR"} | {"PG_PORT": str(port)}
    subprocess.run(["scripts/postgres.sh", "remove"], cwd=ROOT, env=env, check=False)
    _run_script(["scripts/postgres.sh", "start"], env, "PostgreSQL")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(["scripts/postgres.sh", "remove"], cwd=ROOT, env=env, check=False)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A freshly migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'waiting.sqlite3'}"
    else:
        url = create_postgres_database(request.getfixturevalue("postgres_server"))
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
async def system(database_url: str, kafka_bootstrap: str) -> AsyncIterator[System]:
    """token_api and one activator on the session's database and broker."""
    token_settings, activator_settings = settings_for(database_url, kafka_bootstrap)
    async with running_system(token_settings, activator_settings) as running:
        yield running


@pytest.fixture(scope="session")
def fresh_database(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], str]:
    """Makes another freshly migrated database of the session's backend, for a test that
    needs a store nobody else writes to (call it off the event loop: it migrates)."""

    def make() -> str:
        if database_url.startswith("sqlite"):
            path = tmp_path_factory.mktemp("sqlite") / "fresh.sqlite3"
            url = f"sqlite+aiosqlite:///{path}"
        else:
            url = create_postgres_database(request.getfixturevalue("postgres_server"))
        migrate.upgrade(url)
        return url

    return make


_schedule_ids = itertools.count(secrets.randbelow(10**9) * 1000 + 1)


@pytest.fixture
def schedule_id() -> int:
    """A schedule id no other test uses."""
    return next(_schedule_ids)


@pytest.fixture
def new_schedule_id() -> Callable[[], int]:
    """Hands out schedule ids no other test uses."""
    return lambda: next(_schedule_ids)
