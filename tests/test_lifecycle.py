"""Starting and stopping: without a broker, and on a database that was not migrated."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from alembic import command

from activator.server import Activator
from tests.helpers import settings_for
from token_api.server import TokenApi
from tools.system import free_port
from waiting_core.migrate import SchemaOutOfDate, alembic_config, newest_revision


async def test_services_stop_cleanly_when_the_broker_never_came(database_url: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    token_settings, activator_settings = settings_for(database_url, nobody)
    token_api = TokenApi(token_settings)
    activator = Activator(dataclasses.replace(activator_settings, shutdown_grace_seconds=0.5))

    await token_api.start()
    await activator.start()  # its consumer keeps trying to reach the broker in the background

    await asyncio.wait_for(activator.stop(), timeout=15)  # used to raise AssertionError
    await asyncio.wait_for(token_api.stop(), timeout=15)

    assert not activator.consumer.ready.is_set()  # the broker was never reached
    assert token_api.relay.published == 0


async def test_a_service_refuses_a_schema_that_is_not_the_newest(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0002")
    token_settings, _ = settings_for(url, f"127.0.0.1:{free_port()}")

    needs = f"revision 0002, this code needs {newest_revision()}"
    with pytest.raises(SchemaOutOfDate, match=needs):
        await TokenApi(token_settings).start()
