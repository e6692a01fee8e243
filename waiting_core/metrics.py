"""Prometheus metrics of both services, with the gRPC calls counted by method and code.

Each service serves them on its own METRICS_PORT (0 turns the endpoint off). Names follow
Prometheus conventions. The number of series does not grow with the number of schedules:
token counters are totals, and only the busiest lines (by PENDING, then ACTIVE) get a
per-schedule gauge (:class:`LiveLines`). A platform with 10,000 schedules would otherwise
serve tens of thousands of series per scrape.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TOKENS_ISSUED = Counter("waiting_tokens_issued_total", "Tokens issued")
TOKENS_ADMITTED = Counter("waiting_tokens_admitted_total", "Tokens made ACTIVE")
TOKENS_EXPIRED = Counter("waiting_tokens_expired_total", "Tokens expired (active TTL or abandoned)")
TOKENS_COMPLETED = Counter("waiting_tokens_completed_total", "Tokens completed")
TOKENS_CANCELLED = Counter("waiting_tokens_cancelled_total", "Tokens cancelled")
ISSUE_TO_ADMIT = Histogram(
    "waiting_issue_to_admit_seconds",
    "Time from issue to admission",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120, 600, 3600),
)
CONSUMER_LAG = Gauge(
    "waiting_consumer_lag_records", "Records behind the partition's end", ["partition"]
)
CONSUMER_BATCH = Histogram(
    "waiting_consumer_batch_records",
    "Records applied per consumer batch (one transaction and one offset commit each)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
ISSUE_GROUP = Histogram(
    "waiting_issue_group_calls",
    "IssueToken calls per group (one read and one produce request each)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500),
)
OUTBOX_BACKLOG = Gauge("waiting_outbox_backlog", "Outbox events not yet published")
RPCS = Counter("grpc_server_handled_total", "RPCs completed", ["method", "code"])
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "RPC handling time",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)


BUSIEST_LINES = 10


class LiveLines(Collector):
    """Live counts of the schedules this process settled, as of their last settle.

    Scraped as totals (``waiting_tokens_pending``, ``waiting_tokens_active``,
    ``waiting_lines_live``) and, for the BUSIEST_LINES schedules with the most PENDING (then
    ACTIVE) tokens, as ``waiting_line_pending{schedule}`` and ``waiting_line_active{schedule}``.
    A schedule leaves when it has no live tokens.
    """

    def __init__(self, busiest: int = BUSIEST_LINES) -> None:
        self._busiest = busiest
        self._lines: dict[int, tuple[int, int]] = {}  # schedule -> (pending, active)

    def record(self, schedule_id: int, pending: int, active: int) -> None:
        """The schedule's counts after a settle."""
        if pending > 0 or active > 0:
            self._lines[schedule_id] = (pending, active)
        else:
            self._lines.pop(schedule_id, None)

    def collect(self) -> Iterator[Metric]:
        """The metrics, computed at scrape time (in the HTTP server's thread)."""
        lines = self._lines.copy()  # atomic: the event loop may change the dict meanwhile
        yield _gauge("waiting_tokens_pending", "PENDING tokens", sum(p for p, _ in lines.values()))
        yield _gauge("waiting_tokens_active", "ACTIVE tokens", sum(a for _, a in lines.values()))
        yield _gauge("waiting_lines_live", "Schedules with live tokens", len(lines))
        busiest = heapq.nlargest(self._busiest, lines.items(), key=lambda line: line[1])
        pending = GaugeMetricFamily(
            "waiting_line_pending", "PENDING tokens of the busiest lines", labels=["schedule"]
        )
        active = GaugeMetricFamily(
            "waiting_line_active", "ACTIVE tokens of the busiest lines", labels=["schedule"]
        )
        for schedule_id, (waiting, admitted) in busiest:
            pending.add_metric([str(schedule_id)], waiting)
            active.add_metric([str(schedule_id)], admitted)
        yield pending
        yield active


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation + ", as of each schedule's last settle", value)


LIVE_LINES = LiveLines()
REGISTRY.register(LIVE_LINES)


class MethodMetrics:
    """The call count by code and the handling time of one method (``waiting_core.calls``)."""

    def __init__(self, method: str) -> None:
        self._method = method
        self._seconds = RPC_SECONDS.labels(method)
        self._counters: dict[str, Counter] = {}  # the counter child of each code, found once

    def record(self, code: str, seconds: float) -> None:
        """One call ended with ``code`` after ``seconds``."""
        counter = self._counters.get(code)
        if counter is None:
            counter = self._counters[code] = RPCS.labels(self._method, code)
        counter.inc()
        self._seconds.observe(seconds)
