"""Prometheus metrics: scraping /metrics after a few issued tokens shows the counters moving."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from dataclasses import replace

from tests.helpers import System, issue, wait_counts
from token_api.server import TokenApi
from tools.system import free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_counters_move_after_issuing(system: System, schedule_id: int) -> None:
    port = free_port()
    settings = replace(system.token_api_settings, port=0, metrics_port=port)
    async with TokenApi(settings):  # the token_api whose endpoint we scrape
        before = await asyncio.to_thread(_scrape, port)
        for user in ("a", "b", "c"):
            await issue(system, user, schedule_id)
        await wait_counts(system, schedule_id, active=3, pending=0)
        after = await asyncio.to_thread(_scrape, port)

    schedule = str(schedule_id)
    assert _value(before, "waiting_tokens_issued_total", schedule=schedule) == 0
    assert _value(after, "waiting_tokens_issued_total", schedule=schedule) == 3
    assert _value(after, "waiting_tokens_admitted_total", schedule=schedule) == 3
    assert _value(after, "waiting_tokens_active", schedule=schedule) == 3
    method = "/waiting.v1.TokenService/IssueToken"
    assert _value(after, "grpc_server_handled_total", method=method, code="OK") >= 3
    assert _value(after, "waiting_issue_to_admit_seconds_count") >= 3
