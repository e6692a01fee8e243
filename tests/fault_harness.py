"""A load run through real processes (token_api + two activators) on PostgreSQL, with samples.

The harness issues several thousand tokens into one schedule with a short active TTL, so
the line keeps draining, while a sampler reads the database directly (not through the
proxy the services use) to record the worst active count and each token's first-seen
activation time. After the fault and the drain it checks I1-I4 and returns a report.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

import grpc
from sqlalchemy import select

from tests.helpers import admin_channel
from tools.system import ROOT, Cluster, Service
from waiting.v1 import (
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from waiting_core.database import Database
from waiting_core.domain import TokenStatus
from waiting_core.models import TokenRow

REPORT = ROOT / ".run" / "fault-report.jsonl"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class FaultReport:
    """The figures a fault run ends with."""

    fault: str
    database: str = "postgresql"
    issued: int = 0
    issue_failures: int = 0
    issue_retries: int = 0
    in_database: int = 0
    admitted: int = 0
    pending_at_end: int = 0
    lost: int = 0
    activated_twice_or_changed: int = 0
    second_live_token_for_a_user: int = 0
    capacity: int = 0
    max_active_seen: int = 0
    samples: int = 0
    fifo_violations: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def worst_active_ratio(self) -> float:
        """The highest active/capacity seen in any sample."""
        return self.max_active_seen / self.capacity if self.capacity else 0.0

    def save(self) -> None:
        """Append to .run/fault-report.jsonl and print one line."""
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        row = {**asdict(self), "worst_active_ratio": round(self.worst_active_ratio, 3)}
        with REPORT.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(f"\nFAULT REPORT {json.dumps(row)}")


@dataclass
class FaultRun:
    """One schedule under load through a cluster of real service processes."""

    cluster: Cluster
    direct_database_url: str
    tokens: int = 3000
    capacity: int = 100
    concurrency: int = 20
    schedule_id: int = field(default_factory=lambda: secrets.randbelow(10**9) + 1)
    issued: dict[str, str] = field(default_factory=dict)
    first_activation: dict[str, object] = field(default_factory=dict)
    token_api: Service | None = None
    activators: list[Service] = field(default_factory=list)

    def start(self) -> None:
        """token_api and two activators."""
        self.token_api = self.cluster.start("token_api")
        self.activators = [self.cluster.start("activator"), self.cluster.start("activator")]

    async def configure(self) -> None:
        """A small capacity and a 1 s active TTL, so the line drains during the run."""
        assert self.token_api is not None
        async with admin_channel(self.token_api.address) as channel:
            await schedule_service_pb2_grpc.ScheduleServiceStub(channel).UpsertSchedule(
                schedule_service_pb2.UpsertScheduleRequest(
                    schedule=schedule_service_pb2.Schedule(
                        schedule_id=self.schedule_id, capacity=self.capacity, active_ttl_seconds=1
                    )
                ),
                timeout=10,
            )

    async def issue_all(self, report: FaultReport, progress: asyncio.Event) -> None:
        """Issue every token with a few concurrent clients that retry like real ones."""
        assert self.token_api is not None
        users = asyncio.Queue[str]()
        for i in range(self.tokens):
            users.put_nowait(f"user-{i}")
        async with grpc.aio.insecure_channel(self.token_api.address) as channel:
            stub = token_service_pb2_grpc.TokenServiceStub(channel)
            await asyncio.gather(
                *(self._client(stub, users, report, progress) for _ in range(self.concurrency))
            )

    async def _client(
        self,
        stub: token_service_pb2_grpc.TokenServiceAsyncStub,
        users: asyncio.Queue[str],
        report: FaultReport,
        progress: asyncio.Event,
    ) -> None:
        while not users.empty():
            user = users.get_nowait()
            token_id = await self._issue_with_retry(stub, user, report)
            if token_id:
                self.issued[user] = token_id
            else:
                report.issue_failures += 1
            if len(self.issued) >= self.tokens // 3:
                progress.set()

    async def _issue_with_retry(
        self, stub: token_service_pb2_grpc.TokenServiceAsyncStub, user: str, report: FaultReport
    ) -> str:
        request = token_service_pb2.IssueTokenRequest(user_id=user, schedule_id=self.schedule_id)
        deadline = time.monotonic() + 90
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                reply = await stub.IssueToken(request, timeout=5)
                return str(reply.token.token_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    report.notes.append(f"IssueToken: {exc.code().name} {exc.details()}")
                    return ""
                report.issue_retries += 1
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
        return ""

    async def sample_until(self, stop: asyncio.Event, report: FaultReport) -> None:
        """Record the active count and first-seen activation times until ``stop``."""
        async with Database(self.direct_database_url, pool_size=2) as database:
            while not stop.is_set():
                async with database.transaction(read_only=True) as session:
                    rows = (
                        await session.execute(
                            select(TokenRow.token_id, TokenRow.status, TokenRow.activated_at).where(
                                TokenRow.schedule_id == self.schedule_id
                            )
                        )
                    ).all()
                active = sum(1 for r in rows if r.status == TokenStatus.ACTIVE)
                report.max_active_seen = max(report.max_active_seen, active)
                report.samples += 1
                for row in rows:
                    if row.activated_at is not None:
                        self.first_activation.setdefault(row.token_id, row.activated_at)
                await asyncio.sleep(0.1)

    async def wait_drained(self, timeout: float = 150.0) -> None:
        """Wait until no token of the schedule is PENDING or ACTIVE."""
        deadline = time.monotonic() + timeout
        async with Database(self.direct_database_url, pool_size=1) as database:
            while time.monotonic() < deadline:
                async with database.transaction(read_only=True) as session:
                    rows = await self._rows(session)
                if len(rows) >= len(self.issued) and all(not r.status.is_live for r in rows):
                    return
                await asyncio.sleep(0.5)

    async def _rows(self, session: object) -> list[TokenRow]:
        result = await session.execute(  # type: ignore[attr-defined]
            select(TokenRow).where(TokenRow.schedule_id == self.schedule_id)
        )
        return list(result.scalars().all())

    async def check(self, report: FaultReport) -> None:
        """Fill in the report from the database."""
        async with (
            Database(self.direct_database_url, pool_size=1) as database,
            database.transaction(read_only=True) as session,
        ):
            rows = await self._rows(session)
        by_id = {r.token_id: r for r in rows}
        report.capacity = self.capacity
        report.issued = len(self.issued)
        report.in_database = sum(1 for t in self.issued.values() if t in by_id)
        report.admitted = sum(1 for r in rows if r.activated_at is not None)
        report.pending_at_end = sum(1 for r in rows if r.status == TokenStatus.PENDING)
        report.lost = sum(
            1 for t in self.issued.values() if t not in by_id or by_id[t].activated_at is None
        )
        report.activated_twice_or_changed = sum(
            1
            for token_id, first in self.first_activation.items()
            if by_id[token_id].activated_at != first
        )
        users = [r.user_id for r in rows]
        report.second_live_token_for_a_user = len(users) - len(set(users))
        ordered = sorted((r for r in rows if r.activated_at is not None), key=lambda r: r.seq)
        report.fifo_violations = sum(
            1
            for before, after in itertools.pairwise(ordered)
            if _activated(after) < _activated(before)
        )


def assert_invariants(report: FaultReport) -> None:
    """I1-I5 as the fault tests require them."""
    assert report.issue_failures == 0, report.notes[:5]
    assert report.lost == 0, "I3: tokens lost"
    assert report.pending_at_end == 0, "I3: tokens never admitted"
    assert report.activated_twice_or_changed == 0, "I4"
    assert report.second_live_token_for_a_user == 0, "I5"
    assert report.max_active_seen <= report.capacity, "I1"
    assert report.fifo_violations == 0, "I2"
    assert report.samples > 10, "the sampler hardly ran"


def _activated(row: TokenRow) -> datetime:
    assert row.activated_at is not None
    return row.activated_at
