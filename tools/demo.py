"""``make demo``: a crowd joins one small schedule through the real gRPC API.

Users arrive over a few seconds, watch their token with WatchToken, and once admitted either
complete, cancel, or let the short active TTL run out; some abandon the line and some give
up while waiting. A live display shows the line; the summary checks every invariant and
reports the wait p50/p99 and the ETA error.

It uses the services of ``make run`` when they answer on 50051/50052, and otherwise starts the
broker and both services itself (on the embedded SQLite file) and stops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tools import demo_prequeue
from tools.system import ROOT, Cluster, is_listening, migrate, start_broker, stop_broker
from waiting.v1 import (
    queue_status_service_pb2 as qs,
)
from waiting.v1 import (
    queue_status_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    token_pb2,
    token_service_pb2_grpc,
)
from waiting.v1 import (
    token_service_pb2 as ts,
)
from waiting_core.retry import backoff

T = TypeVar("T")
EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009 - grpc-stubs does not know it
ACTIVE = token_pb2.TOKEN_STATUS_ACTIVE
PENDING = token_pb2.TOKEN_STATUS_PENDING


@dataclass
class Outcome:
    """What happened to one simulated user."""

    user_id: str
    role: str
    token_id: str = ""
    issued_at: float = 0.0
    admitted_after: float | None = None
    first_eta: int | None = None
    activated_at_seen: set[int] = field(default_factory=set)
    final_status: int = 0
    tokens: Any = None  # the user's own TokenService stub (on one of several connections)
    queue: Any = None  # the user's own QueueStatusService stub


@dataclass
class Crowd:
    """The run's settings and what it observed."""

    args: argparse.Namespace
    tokens: token_service_pb2_grpc.TokenServiceAsyncStub
    schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub
    queue: queue_status_service_pb2_grpc.QueueStatusServiceAsyncStub
    outcomes: list[Outcome] = field(default_factory=list)
    user_stubs: list[tuple[Any, Any]] = field(default_factory=list)
    max_active_seen: int = 0
    retries: int = 0
    watch_reopens: int = 0
    last_status: qs.GetQueueStatusResponse | None = None


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The demo's knobs."""
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--capacity", type=int, default=100)
    parser.add_argument("--active-ttl", type=int, default=3, help="seconds")
    parser.add_argument("--pending-ttl", type=int, default=4, help="seconds; abandoners drop")
    parser.add_argument("--arrival-seconds", type=float, default=20.0)
    parser.add_argument("--abandon", type=float, default=0.05, help="share who stop asking")
    parser.add_argument("--give-up", type=float, default=0.05, help="share who cancel in line")
    parser.add_argument("--cancel", type=float, default=0.15, help="share who cancel once in")
    parser.add_argument("--complete", type=float, default=0.6, help="share who complete")
    parser.add_argument("--token-api", default="127.0.0.1:50051")
    parser.add_argument("--activator", default="127.0.0.1:50052")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--prequeue",
        action="store_true",
        help="a sale that opens after a countdown: the pre-queue, its draw, and the check",
    )
    parser.add_argument("--countdown", type=float, default=10.0, help="seconds (--prequeue)")
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("ADMIN_TOKEN") or _make_run_admin_token(),
        help="ScheduleService bearer credential (default: $ADMIN_TOKEN, else make run's)",
    )
    return parser.parse_args(argv)


def _make_run_admin_token() -> str:
    """The credential make run made for this checkout; a fresh one if it never ran."""
    made = ROOT / ".run" / "admin-token"
    return made.read_text().strip() if made.exists() else secrets.token_urlsafe(32)


def assign_roles(args: argparse.Namespace, rng: random.Random) -> list[str]:
    """Each user's behaviour, drawn with the configured shares."""
    roles = ["abandon", "give-up", "cancel", "complete", "expire"]
    rest = max(0.0, 1 - args.abandon - args.give_up - args.cancel - args.complete)
    weights = [args.abandon, args.give_up, args.cancel, args.complete, rest]
    return rng.choices(roles, weights, k=args.users)


async def run_user(crowd: Crowd, outcome: Outcome, delay: float, rng: random.Random) -> None:
    """One user's life: arrive, watch, act."""
    await asyncio.sleep(delay)
    outcome.issued_at = time.monotonic()
    reply = await issue_with_retry(crowd, outcome)
    outcome.token_id = reply.token.token_id
    if outcome.role == "abandon":
        return  # never asks again: the pending TTL (or the active TTL) removes it
    if outcome.role == "give-up":
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        cancel = ts.CancelTokenRequest(token_id=outcome.token_id)
        with contextlib.suppress(grpc.aio.AioRpcError):  # admitted meanwhile, or expired
            await with_retry(crowd, lambda: outcome.tokens.CancelToken(cancel, timeout=10))
        return
    if await watch_until_admitted(crowd, outcome):
        await act_once_admitted(crowd, outcome, rng)


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def with_retry(crowd: Crowd, call: Callable[[], Awaitable[T]]) -> T:
    """A call as a well-behaved client makes it: retried with back-off and jitter on
    UNAVAILABLE or a missed deadline. Safe for every call the demo makes: issue, complete
    and cancel are idempotent."""
    for attempt in range(8):
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or attempt == 7:
                raise
            crowd.retries += 1
            await asyncio.sleep(backoff(attempt + 1, cap=5.0))
    raise AssertionError("unreachable")


async def issue_with_retry(crowd: Crowd, outcome: Outcome) -> ts.IssueTokenResponse:
    """IssueToken, retried (I5 makes that safe)."""
    request = ts.IssueTokenRequest(user_id=outcome.user_id, schedule_id=crowd.args.schedule_id)
    reply: ts.IssueTokenResponse = await with_retry(
        crowd, lambda: outcome.tokens.IssueToken(request, timeout=10)
    )
    return reply


async def watch_until_admitted(crowd: Crowd, outcome: Outcome) -> bool:
    """Follow WatchToken until ACTIVE (True) or the token leaves the line (False); a broken
    stream is opened again, as a real client would."""
    for _ in range(10):
        try:
            return await _watch_once(crowd, outcome)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (*RETRYABLE, grpc.StatusCode.CANCELLED):
                raise
            crowd.watch_reopens += 1
            await asyncio.sleep(0.2)
    return False


async def _watch_once(crowd: Crowd, outcome: Outcome) -> bool:
    stream: Any = outcome.queue.WatchToken(
        qs.WatchTokenRequest(token_id=outcome.token_id), timeout=600
    )
    try:
        while (update := await stream.read()) is not EOF:
            if outcome.first_eta is None and update.token.status == PENDING:
                outcome.first_eta = update.estimated_wait_seconds if update.estimate_known else -1
            if update.token.status == ACTIVE:
                outcome.admitted_after = time.monotonic() - outcome.issued_at
                outcome.activated_at_seen.add(update.token.activated_at.ToNanoseconds())
                return True
        return False
    finally:
        stream.cancel()


async def act_once_admitted(crowd: Crowd, outcome: Outcome, rng: random.Random) -> None:
    """Complete, cancel, or let the active TTL run out."""
    await asyncio.sleep(rng.uniform(0.2, crowd.args.active_ttl * 0.8))
    try:
        if outcome.role == "complete":
            complete = ts.CompleteTokenRequest(token_id=outcome.token_id)
            await with_retry(crowd, lambda: outcome.tokens.CompleteToken(complete, timeout=10))
        elif outcome.role == "cancel":
            cancel = ts.CancelTokenRequest(token_id=outcome.token_id)
            await with_retry(crowd, lambda: outcome.tokens.CancelToken(cancel, timeout=10))
    except grpc.aio.AioRpcError as exc:
        # Too slow: the active TTL ran out first. That is the service working as designed.
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise


def render(crowd: Crowd, started: float) -> Table:
    """The live display."""
    status = crowd.last_status
    admitted = sum(1 for o in crowd.outcomes if o.admitted_after is not None)
    issued = sum(1 for o in crowd.outcomes if o.token_id)
    table = Table(title=f"schedule {crowd.args.schedule_id} — {time.monotonic() - started:5.1f}s")
    for column in ("issued", "admitted (watched)", "active", "pending", "capacity", "ETA newcomer"):
        table.add_column(column, justify="right")
    eta = "—"
    if status is not None:
        eta = f"{status.estimated_wait_seconds}s" if status.estimate_known else "unknown"
    table.add_row(
        str(issued),
        str(admitted),
        str(status.active_count if status else 0),
        str(status.pending_count if status else 0),
        str(crowd.args.capacity),
        eta,
    )
    return table


async def sample(crowd: Crowd) -> None:
    """Poll the line for the display and for the capacity check (I1)."""
    crowd.last_status = await crowd.queue.GetQueueStatus(
        qs.GetQueueStatusRequest(schedule_id=crowd.args.schedule_id), timeout=10
    )
    crowd.max_active_seen = max(crowd.max_active_seen, crowd.last_status.active_count)


async def run_crowd(crowd: Crowd) -> None:
    """Configure the schedule, release the crowd, display until the line is empty."""
    args = crowd.args
    await crowd.schedules.UpsertSchedule(
        schedule_service_pb2.UpsertScheduleRequest(
            schedule=schedule_service_pb2.Schedule(
                schedule_id=args.schedule_id,
                capacity=args.capacity,
                active_ttl_seconds=args.active_ttl,
                pending_ttl_seconds=args.pending_ttl,
            )
        ),
        metadata=(("authorization", f"Bearer {args.admin_token}"),),
        timeout=10,
    )
    rng = random.Random(args.seed)
    roles = assign_roles(args, rng)
    crowd.outcomes = [Outcome(f"demo-user-{i}", role) for i, role in enumerate(roles)]
    for i, outcome in enumerate(crowd.outcomes):
        outcome.tokens, outcome.queue = crowd.user_stubs[i % len(crowd.user_stubs)]
    delays = sorted(rng.uniform(0, args.arrival_seconds) for _ in roles)
    tasks = [
        asyncio.create_task(run_user(crowd, o, d, random.Random(rng.random())))
        for o, d in zip(crowd.outcomes, delays, strict=True)
    ]
    started = time.monotonic()
    with Live(render(crowd, started), refresh_per_second=4) as live:
        while not all(t.done() for t in tasks) or _line_busy(crowd):
            await sample(crowd)
            live.update(render(crowd, started))
            await asyncio.sleep(0.25)
    for task in tasks:
        task.result()  # surface any unexpected RPC error


def _line_busy(crowd: Crowd) -> bool:
    status = crowd.last_status
    return status is None or status.active_count > 0 or status.pending_count > 0


async def check_invariants(crowd: Crowd) -> list[tuple[str, bool, str]]:
    """Each invariant with a verdict and the evidence."""
    finals = {}
    for outcome in crowd.outcomes:
        reply = await crowd.tokens.GetToken(
            ts.GetTokenRequest(token_id=outcome.token_id), timeout=10
        )
        finals[outcome.token_id] = reply.token
        outcome.final_status = reply.token.status
    admitted = [t for t in finals.values() if t.HasField("activated_at")]
    # Tokens issued in one group commit share an issue time; among those the line's order is
    # not visible to a client, so ties are ordered by activation.
    by_issue = sorted(
        admitted, key=lambda t: (t.issued_at.ToNanoseconds(), t.activated_at.ToNanoseconds())
    )
    activation_order = [t.activated_at.ToNanoseconds() for t in by_issue]
    stuck = [t for t in finals.values() if t.status in (PENDING, ACTIVE)]
    changed = [o for o in crowd.outcomes if len(o.activated_at_seen) > 1]
    reissue_probe = await _reissue_probe(crowd)
    bad_input = await _bad_input_probe(crowd)
    return [
        (
            "I1 capacity",
            crowd.max_active_seen <= crowd.args.capacity,
            f"max active seen {crowd.max_active_seen} <= capacity {crowd.args.capacity}",
        ),
        (
            "I2 FIFO",
            activation_order == sorted(activation_order),
            f"{len(admitted)} admitted tokens activated in issue order",
        ),
        ("I3 nothing lost", not stuck, f"{len(finals)} tokens, {len(stuck)} left live at the end"),
        ("I4 once", not changed, f"{len(changed)} tokens whose activated_at changed"),
        ("I5 idempotent issue", reissue_probe, "re-issue of a live token returned the same one"),
        ("I6 bad input", bad_input, "empty user_id got INVALID_ARGUMENT naming the field"),
    ]


async def _reissue_probe(crowd: Crowd) -> bool:
    request = ts.IssueTokenRequest(user_id="demo-probe", schedule_id=crowd.args.schedule_id)
    first = await crowd.tokens.IssueToken(request, timeout=10)
    again = await crowd.tokens.IssueToken(request, timeout=10)
    await crowd.tokens.CancelToken(ts.CancelTokenRequest(token_id=first.token.token_id), timeout=10)
    return first.token.token_id == again.token.token_id


async def _bad_input_probe(crowd: Crowd) -> bool:
    try:
        await crowd.tokens.IssueToken(ts.IssueTokenRequest(user_id="", schedule_id=1), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in (exc.details() or "")
    return False


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of the values lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def print_summary(console: Console, crowd: Crowd, checks: list[tuple[str, bool, str]]) -> bool:
    """The closing report; True when every invariant held."""
    waits = [o.admitted_after for o in crowd.outcomes if o.admitted_after is not None]
    eta_errors = [
        abs(o.first_eta - o.admitted_after)
        for o in crowd.outcomes
        if o.first_eta is not None and o.first_eta >= 0 and o.admitted_after is not None
    ]
    statuses = [o.final_status for o in crowd.outcomes]
    console.print(
        f"\n[bold]Summary[/bold] — {crowd.args.users} users, capacity {crowd.args.capacity}, "
        f"active TTL {crowd.args.active_ttl}s, pending TTL {crowd.args.pending_ttl}s"
    )
    for name, value in token_pb2.TokenStatus.items():
        if value:
            console.print(
                f"  {name.removeprefix('TOKEN_STATUS_').lower():<10} {statuses.count(value)}"
            )
    if waits:
        console.print(
            f"  wait to admission (watchers): p50 {percentile(waits, 0.5):.2f}s, "
            f"p99 {percentile(waits, 0.99):.2f}s over {len(waits)} users"
        )
    if eta_errors:
        console.print(
            "  ETA error (first estimate vs. actual): "
            f"median {statistics.median(eta_errors):.2f}s, "
            f"p90 {percentile(eta_errors, 0.9):.2f}s over {len(eta_errors)} users"
        )
    console.print(
        f"  retried calls (UNAVAILABLE or deadline): {crowd.retries}; "
        f"watch streams reopened: {crowd.watch_reopens}"
    )
    for name, ok, evidence in checks:
        console.print(f"  {'[green]PASS[/green]' if ok else '[red]FAIL[/red]'} {name}: {evidence}")
    return all(ok for _, ok, _ in checks)


@contextlib.contextmanager
def system_for(args: argparse.Namespace) -> Iterator[None]:
    """Use running services, or start the broker and both services for the demo."""
    token_port = int(args.token_api.rsplit(":", 1)[1])
    activator_port = int(args.activator.rsplit(":", 1)[1])
    if is_listening(token_port) and is_listening(activator_port):
        yield
        return
    data_dir = ROOT / ".run" / "kafka-9092"
    started_broker = start_broker(9092, data_dir)
    database_url = f"sqlite+aiosqlite:///{ROOT / '.run' / 'waiting-room.sqlite3'}"
    migrate(database_url)
    cluster = Cluster(
        database_url,
        "127.0.0.1:9092",
        ROOT / ".run" / "demo-logs",
        extra_env={"ADMIN_TOKEN": args.admin_token},
    )
    try:
        cluster.start("token_api", token_port)
        cluster.start("activator", activator_port)
        yield
    finally:
        cluster.stop_all()
        if started_broker:
            stop_broker(9092, data_dir)


USERS_PER_CONNECTION = 200


async def amain(args: argparse.Namespace) -> bool:
    """Run the crowd and report."""
    async with contextlib.AsyncExitStack() as stack:
        # Real users do not share one HTTP/2 connection; a few thousand calls in flight on one
        # channel also exceed what a single gRPC connection carries (they come back CANCELLED).
        connections = max(1, -(-args.users // USERS_PER_CONNECTION))
        pairs = []
        for k in range(connections):
            options = [("grpc.channel_id", k)]  # a distinct argument: a distinct connection
            token_channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(args.token_api, options=options)
            )
            activator_channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(args.activator, options=options)
            )
            pairs.append((token_channel, activator_channel))
        crowd = Crowd(
            args,
            token_service_pb2_grpc.TokenServiceStub(pairs[0][0]),
            schedule_service_pb2_grpc.ScheduleServiceStub(pairs[0][0]),
            queue_status_service_pb2_grpc.QueueStatusServiceStub(pairs[0][1]),
            user_stubs=[
                (
                    token_service_pb2_grpc.TokenServiceStub(t),
                    queue_status_service_pb2_grpc.QueueStatusServiceStub(a),
                )
                for t, a in pairs
            ],
        )
        await run_crowd(crowd)
        checks = await check_invariants(crowd)
        return print_summary(Console(), crowd, checks)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make demo``."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.schedule_id = random.SystemRandom().randrange(10**6, 10**9)
    with system_for(args):
        ok = asyncio.run(demo_prequeue.run(args) if args.prequeue else amain(args))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
