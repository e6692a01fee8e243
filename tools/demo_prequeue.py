"""``make demo DEMO_ARGS=--prequeue``: a sale with a pre-queue, through the real gRPC API.

The schedule opens ``--countdown`` seconds from now. The crowd arrives during the countdown
and nobody is admitted; the commitment to the draw's seed is shown from the start. At the
opening the activator draws the order; the demo then reads the revealed seed, checks it
against the commitment, recomputes the order from the seed and the token ids alone, and
checks it against who was admitted and every position. A few late arrivals queue behind.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.live import Live

from waiting.v1 import (
    queue_status_service_pb2,
    queue_status_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    token_pb2,
    token_service_pb2,
    token_service_pb2_grpc,
)

LATE_ARRIVALS = 5
ACTIVE = token_pb2.TOKEN_STATUS_ACTIVE


def recompute_order(seed_hex: str, token_ids: list[str]) -> list[str]:
    """The drawn order, as anyone can compute it from the revealed seed."""
    seed = bytes.fromhex(seed_hex)
    return sorted(token_ids, key=lambda t: hmac.new(seed, t.encode(), hashlib.sha256).digest())


class Sale:
    """The stubs and settings of one demo sale."""

    def __init__(self, args: argparse.Namespace, token: grpc.aio.Channel, queue: grpc.aio.Channel):
        self.args = args
        self.tokens = token_service_pb2_grpc.TokenServiceStub(token)
        self.schedules = schedule_service_pb2_grpc.ScheduleServiceStub(token)
        self.queue = queue_status_service_pb2_grpc.QueueStatusServiceStub(queue)
        self.auth = (("authorization", f"Bearer {args.admin_token}"),)
        self.schedule_id: int = args.schedule_id

    async def open_at(self, opens_at: datetime) -> schedule_service_pb2.Schedule:
        stamp = Timestamp()
        stamp.FromDatetime(opens_at)
        schedule = schedule_service_pb2.Schedule(
            schedule_id=self.schedule_id,
            capacity=self.args.capacity,
            active_ttl_seconds=600,
            opens_at=stamp,
            prequeue_order=schedule_service_pb2.PREQUEUE_ORDER_SHUFFLED,
        )
        reply = await self.schedules.UpsertSchedule(
            schedule_service_pb2.UpsertScheduleRequest(schedule=schedule),
            metadata=self.auth,
            timeout=10,
        )
        return reply.schedule

    async def schedule(self) -> schedule_service_pb2.Schedule:
        request = schedule_service_pb2.GetScheduleRequest(schedule_id=self.schedule_id)
        return (await self.schedules.GetSchedule(request, metadata=self.auth, timeout=10)).schedule

    async def issue(self, user_id: str) -> str:
        request = token_service_pb2.IssueTokenRequest(user_id=user_id, schedule_id=self.schedule_id)
        return (await self.tokens.IssueToken(request, timeout=10)).token.token_id

    async def status(self, token_id: str) -> queue_status_service_pb2.GetTokenStatusResponse:
        request = queue_status_service_pb2.GetTokenStatusRequest(token_id=token_id)
        return await self.queue.GetTokenStatus(request, timeout=10)

    async def active_count(self) -> int:
        request = queue_status_service_pb2.GetQueueStatusRequest(schedule_id=self.schedule_id)
        return (await self.queue.GetQueueStatus(request, timeout=10)).active_count


async def run(args: argparse.Namespace) -> bool:
    """The whole sale; True when every check holds."""
    console = Console()
    async with (
        grpc.aio.insecure_channel(args.token_api) as token_channel,
        grpc.aio.insecure_channel(args.activator) as queue_channel,
    ):
        sale = Sale(args, token_channel, queue_channel)
        opens_at = datetime.now(UTC) + timedelta(seconds=args.countdown)
        published = await sale.open_at(opens_at)
        console.print(
            f"schedule {sale.schedule_id} opens at {opens_at:%H:%M:%S.%f} UTC; "
            f"capacity {args.capacity}\n"
            f"commitment (SHA-256 of the secret seed): {published.prequeue_commitment}"
        )
        cohort = await _countdown(sale, console, opens_at)
        first_active = await _first_admission(sale)
        late = [await sale.issue(f"late-{i}") for i in range(LATE_ARRIVALS)]
        return await _verify(sale, console, published, cohort, late, opens_at, first_active)


async def _countdown(sale: Sale, console: Console, opens_at: datetime) -> list[str]:
    """The crowd arrives before the opening; nobody is admitted meanwhile."""
    users = sale.args.users
    spread = max(0.5, (opens_at - datetime.now(UTC)).total_seconds() - 1.0)
    cohort: list[str] = []
    admitted_early = 0

    async def arrive(i: int) -> None:
        await asyncio.sleep(spread * i / users)
        cohort.append(await sale.issue(f"fan-{i:05d}"))

    arrivals = asyncio.gather(*(arrive(i) for i in range(users)))
    with Live(console=console, refresh_per_second=4) as live:
        while (left := (opens_at - datetime.now(UTC)).total_seconds()) > 0:
            admitted_early = max(admitted_early, await sale.active_count())
            live.update(
                f"opens in {left:5.1f} s | in the pre-queue: {len(cohort):>5} | "
                f"admitted: {admitted_early}"
            )
            await asyncio.sleep(0.25)
    await arrivals
    if admitted_early:
        console.print(f"[red]{admitted_early} admitted before the opening[/red]")
    return cohort


async def _first_admission(sale: Sale) -> float:
    """Seconds from now until a reader sees the first admissions."""
    started = time.monotonic()
    while True:
        if await sale.active_count() > 0:
            return time.monotonic() - started
        await asyncio.sleep(0.01)


async def _verify(
    sale: Sale,
    console: Console,
    published: schedule_service_pb2.Schedule,
    cohort: list[str],
    late: list[str],
    opens_at: datetime,
    first_active: float,
) -> bool:
    revealed = await sale.schedule()
    while not revealed.prequeue_seed:  # revealed once the line is renumbered
        await asyncio.sleep(0.05)
        revealed = await sale.schedule()
    seed = revealed.prequeue_seed
    order = recompute_order(seed, cohort)
    views = {t: await sale.status(t) for t in order + late}
    capacity = sale.args.capacity
    admitted = [t for t in order if views[t].token.status == ACTIVE]
    positions = [views[t].token.position for t in order[capacity:]]
    checks = [
        (
            "the seed matches the commitment",
            hashlib.sha256(bytes.fromhex(seed)).hexdigest() == published.prequeue_commitment,
        ),
        ("the first admitted are the first drawn", admitted == order[: len(admitted)]),
        ("positions follow the drawn order", positions == list(range(1, len(positions) + 1))),
        (
            "late arrivals queue behind the cohort",
            [views[t].token.position for t in late]
            == list(range(len(positions) + 1, len(positions) + 1 + len(late))),
        ),
    ]
    drawn_at = revealed.drawn_at.ToDatetime(tzinfo=UTC)
    console.print(
        f"\nopened: first admissions seen {first_active * 1000:.0f} ms after the countdown "
        f"ended; line renumbered in drawn order at +"
        f"{(drawn_at - opens_at).total_seconds() * 1000:.0f} ms; "
        f"{len(admitted)} admitted of {len(cohort)} in the pre-queue\n"
        f"revealed seed: {seed}\n"
        "anyone can repeat the draw: sort the cohort's token ids by\n"
        "  hmac.new(bytes.fromhex(seed), token_id.encode(), hashlib.sha256).digest()\n"
    )
    for name, ok in checks:
        console.print(f"{'[green]ok[/green]' if ok else '[red]FAILED[/red]'}  {name}")
    return all(ok for _, ok in checks)
