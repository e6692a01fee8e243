"""Schema migrations: ``python -m waiting_core.migrate`` upgrades DATABASE_URL to the newest.

Run it once before starting the services (``make run`` and the tests do).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url

from waiting_core.settings import DEFAULT_DATABASE_URL, ConfigError, database_url

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    """An Alembic config for this package's migrations on ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not the one this code was written for."""


def newest_revision() -> str | None:
    """The revision ``upgrade`` brings a database to."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def check_revision(connection: Connection) -> None:
    """Raise SchemaOutOfDate unless the connected database is at the newest revision."""
    current = MigrationContext.configure(connection).get_current_revision()
    newest = newest_revision()
    if current != newest:
        raise SchemaOutOfDate(
            f"the database schema is at revision {current or 'none'}, this code needs "
            f"{newest}: run `python -m waiting_core.migrate` first (make run does)"
        )


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema. Blocking; call it outside a loop."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def main() -> int:
    """Upgrade the database named by DATABASE_URL (or the embedded SQLite default)."""
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    problem = database_url(url)
    if problem:
        print(
            f"migrate: invalid configuration: {ConfigError(f'DATABASE_URL: {problem}')}",
            file=sys.stderr,
        )
        return 2
    upgrade(url)
    print(f"migrate: {make_url(url).render_as_string(hide_password=True)} is at the newest schema")
    return 0


if __name__ == "__main__":
    sys.exit(main())
