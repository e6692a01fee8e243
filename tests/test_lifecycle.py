"""Both services start without a broker and stop cleanly, even if it never showed up."""

from __future__ import annotations

import asyncio
import dataclasses

from activator.server import Activator
from tests.helpers import settings_for
from token_api.server import TokenApi
from tools.system import free_port


async def test_services_stop_cleanly_when_the_broker_never_came(database_url: str) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    token_settings, activator_settings = settings_for(database_url, nobody)
    token_api = TokenApi(token_settings)
    activator = Activator(dataclasses.replace(activator_settings, shutdown_grace_seconds=0.5))

    await token_api.start()
    await activator.start()
    await asyncio.sleep(0.5)  # both are retrying the broker now

    await asyncio.wait_for(activator.stop(), timeout=15)
    await asyncio.wait_for(token_api.stop(), timeout=15)
