"""Prometheus metrics: scraping /metrics after a few issued tokens shows the counters moving."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from dataclasses import replace

from prometheus_client import CollectorRegistry, generate_latest

from tests.helpers import System, issue, wait_counts
from token_api.server import TokenApi
from tools.system import free_port
from waiting_core.metrics import BUSIEST_LINES, LiveLines


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

    def grew(name: str) -> float:
        return _value(after, name) - _value(before, name)

    # Totals: the series do not grow with the number of schedules.
    assert grew("waiting_tokens_issued_total") == 3
    assert grew("waiting_tokens_admitted_total") >= 3
    assert _value(after, "waiting_tokens_active") >= 3
    assert _value(after, "waiting_lines_live") >= 1
    method = "/waiting.v1.TokenService/IssueToken"
    assert _value(after, "grpc_server_handled_total", method=method, code="OK") >= 3
    assert _value(after, "waiting_issue_to_admit_seconds_count") >= 3


def test_metrics_stay_small_with_ten_thousand_schedules() -> None:
    lines = LiveLines()
    for schedule_id in range(1, 10_001):
        lines.record(schedule_id, pending=schedule_id % 7, active=1)
    lines.record(10_000, pending=0, active=0)  # a line that emptied leaves
    registry = CollectorRegistry()
    registry.register(lines)

    text = generate_latest(registry).decode()

    assert len(text) < 100_000
    assert _value(text, "waiting_lines_live") == 9_999
    assert _value(text, "waiting_tokens_active") == 9_999
    per_schedule = [line for line in text.splitlines() if line.startswith("waiting_line_pending{")]
    assert len(per_schedule) == BUSIEST_LINES
    assert all(line.endswith(" 6.0") for line in per_schedule)  # the longest lines
