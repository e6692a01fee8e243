"""``make bench``: measure the services against the design's targets, with baselines from the
same run on the same machine.

For each database (SQLite, PostgreSQL) it starts token_api and an activator as processes and
measures: the echo ceiling, the Kafka round-trip floor, IssueToken throughput and latency at a
few concurrency levels, issue-to-ACTIVE latency at a steady rate, the drain of 1,000 freed
slots, GetTokenStatus latency with a long line (100k quick, 1M with --full), TokenGate's
offline pass check against the ValidateToken RPC, the opening of a pre-queue of the same
size (100k quick, 1M with --full), and peak RSS.
It writes bench/results.json and bench/latency.png and prints a table with ratios against
the targets. It never fails on a missed target: it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from tools.redis_queue import redis_queue
from tools.system import (
    ROOT,
    Cluster,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    is_listening,
    migrate,
    start_broker,
    stop_broker,
    wait_listening,
)
from waiting.v1 import (
    queue_status_service_pb2,
    queue_status_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from waiting_client import GrpcJwks, KeySet, PassVerifier
from waiting_core.bulk import load_held_lines, load_pending
from waiting_core.database import Database
from waiting_core.domain import MAX_ACTIVE_TTL_SECONDS, ScheduleSettings
from waiting_core.models import ScheduleRow, TokenRow

OUT = ROOT / "bench"
ADMIN = "bench-admin"
AUTH = (("authorization", f"Bearer {ADMIN}"),)
RUSH_CONCURRENCY = 32
# Warm-up: load in steps of this length until, WARM_QUIET_STEPS steps in a row, the broker's JIT
# compiler used less than this share of a core (or --warmup-seconds have passed).
WARM_UP_STEP_SECONDS = 5.0
STATUS_CALLS_PER_SECOND = 400  # beside the TTLs of the many-schedules run (the issue's load)
WARM_QUIET_STEPS = 3
# Longest wait before a section for the activator to consume what came before it.
CATCH_UP_SECONDS = 120.0
# A target and its echo baseline take turns, this many each (``interleaved``; --turns).
TURNS = 4
# CompleteToken's warm-up: a second of calls, on tokens the measured calls do not reach.
WARM_UP_SECONDS, WARM_UP_TOKENS = 1.0, 6000
WARM_COMPILER_SHARE = 0.02
# The ACTIVE TTL of every schedule the bench makes, except the TTL measurement's own: with
# the default (600 s), each section's leftover ACTIVE tokens expired ten minutes later, and
# the line behind them was admitted, in waves of up to 24,000 that landed in later sections
# of a full run (the idle activator measured 2.1-2.8% there, 0.6-1.0% on its own).
QUIET_TTL_SECONDS = MAX_ACTIVE_TTL_SECONDS
DEFAULT_CAPACITY = ScheduleSettings(schedule_id=0).capacity
SECTIONS = ("issue", "release", "to_active", "drain", "status", "gate", "prequeue", "many")
TARGETS = {
    "issue_rps_ratio": ("IssueToken rps / echo rps, c=32", ">=", 0.6),
    "issue_p99_ms": ("IssueToken p99 (ms), c=32", "<=", 25.0),
    "issue_p99_over_echo": ("IssueToken p99 / echo p99, c=32", "<=", 2.0),
    # The same ratio against an echo server on uvloop, the services' own event loop: what
    # IssueToken costs over grpc.aio as the services run it (no target; see README).
    "issue_rps_ratio_same_loop": ("IssueToken rps / echo-on-uvloop rps, c=32", ">=", 0.0),
    # Issue #9's competitor, a Redis sorted-set queue (tools/redis_queue.py), in turns with
    # IssueToken and echo: the ratio #9 quotes for it, and IssueToken's rate against it.
    "redis_rps_ratio": ("Redis queue rps / echo rps, c=32", ">=", 0.0),
    "redis_p99_over_echo": ("Redis queue p99 / echo p99, c=32", "<=", float("inf")),
    "issue_rps_over_redis": ("IssueToken rps / Redis queue rps, c=32", ">=", 0.0),
    "complete_p50_ms": ("CompleteToken p50 (ms), c=32", "<=", float("inf")),
    "complete_p99_ms": ("CompleteToken p99 (ms), c=32", "<=", float("inf")),
    "complete_p99_over_echo": ("CompleteToken p99 / echo p99, c=32", "<=", 2.0),
    "complete_refilling_p50_ms": (
        "CompleteToken p50, a line waiting (ms), c=32",
        "<=",
        float("inf"),
    ),
    "complete_refilling_p99_ms": (
        "CompleteToken p99, a line waiting (ms), c=32",
        "<=",
        float("inf"),
    ),
    "complete_refilling_p99_over_echo": (
        "CompleteToken p99 / echo p99, a line waiting, c=32",
        "<=",
        2.0,
    ),
    "gate_verify_us": ("TokenGate offline pass check (us/call)", "<=", float("inf")),
    "validate_p50_ms": ("ValidateToken RPC p50 (ms), c=32", "<=", float("inf")),
    "validate_p99_ms": ("ValidateToken RPC p99 (ms), c=32", "<=", float("inf")),
    "prequeue_first_admission_ms": ("pre-queue: opens_at -> first ACTIVE seen (ms)", "<=", 200.0),
    "prequeue_draw_ms": ("pre-queue: opens_at -> draw committed (ms)", "<=", float("inf")),
    "to_active_p50_ms": ("issue->ACTIVE p50 (ms)", "<=", 10.0),
    "to_active_p99_ms": ("issue->ACTIVE p99 (ms)", "<=", 50.0),
    "drain_ms": ("1,000 freed slots refilled (ms)", "<=", 200.0),
    "drain_visible_ms": ("... until all are visible to reads (ms)", "<=", 200.0),
    "status_p99_ms": ("GetTokenStatus p99 (ms), long line, c=1", "<=", 5.0),
    "activator_rss_mb": ("activator peak RSS (MB)", "<=", 200.0),
    "idle_cpu_10k": ("idle activator, 10,000 schedules (% core)", "<=", 2.0),
    "idle_cpu_100k": ("idle activator, 100,000 schedules (% core)", "<=", 2.0),
    "ttl_late_p99_ms": ("1,000 TTLs: expired late p99 (ms)", "<=", 1000.0),
    "refill_late_p99_ms": ("1,000 TTLs: slot refilled late p99 (ms)", "<=", 1000.0),
    "spread_all_active_ms": ("10,000 schedules ACTIVE after last issue (ms)", "<=", 2000.0),
    "spread_rps_share": ("IssueToken rps spread / into one schedule", ">=", 0.67),
}


def pct(values: list[float], share: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


@dataclass
class LoadResult:
    """A closed-loop run: requests per second and latencies in ms."""

    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def calls(self) -> int:
        """Calls made, answered or failed."""
        return len(self.latencies_ms) + self.errors

    def add(self, other: LoadResult) -> None:
        """Count another run at the same concurrency in this one."""
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms
        self.errors += other.errors

    def summary(self) -> dict[str, float]:
        """The figures for results.json."""
        return {
            "concurrency": self.concurrency,
            "rps": round(self.rps, 1),
            "p50_ms": round(pct(self.latencies_ms, 0.5), 2),
            "p99_ms": round(pct(self.latencies_ms, 0.99), 2),
            "errors": self.errors,
        }


@dataclass
class CpuUse:
    """CPU seconds spent during a run, by the whole machine and by some processes."""

    machine: float = 0.0
    processes: dict[str, float] = field(default_factory=dict)

    def add(self, other: CpuUse) -> None:
        """Count another run's CPU in this one."""
        self.machine += other.machine
        for name, seconds in other.processes.items():
            self.processes[name] = self.processes.get(name, 0.0) + seconds

    def per_call_ms(self, calls: int) -> dict[str, float]:
        """Milliseconds of CPU per completed call."""
        spent = {"machine": self.machine, **self.processes}
        return (
            {name: round(seconds * 1000 / calls, 3) for name, seconds in spent.items()}
            if calls
            else {}
        )


def listener_pid(port: int) -> int | None:
    """The process that accepts connections on ``port`` (the broker, PostgreSQL), if any."""
    for connection in psutil.net_connections("tcp"):
        address = connection.laddr
        if connection.status == psutil.CONN_LISTEN and address and address.port == port:
            return connection.pid
    return None


def _server_pids(bootstrap: str, database_url: str) -> dict[str, int]:
    """The broker's and PostgreSQL's processes, so that CPU per call shows their share."""
    servers = {"broker": int(bootstrap.rsplit(":", 1)[1])}
    port = make_url(database_url).port
    if port is not None:
        servers["postgres"] = port
    return {name: pid for name, port in servers.items() if (pid := listener_pid(port))}


def _compiler_seconds(pid: int | None) -> float:
    """CPU seconds of a JVM's JIT compiler threads (Linux); 0 without the process."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*") if pid else []:
        with contextlib.suppress(OSError):
            if "Compiler" in (task / "comm").read_text():
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


def _process_seconds(process: psutil.Process) -> float:
    """CPU seconds of the process, and of its children unless it is this load generator
    (whose children are the services): a token_api's children are its workers."""
    members = [process]
    if process.pid != os.getpid():
        members += process.children(recursive=True)
    total = 0.0
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += float(times.user + times.system)
    return total


@contextlib.contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[CpuUse]:
    """Measure the CPU the machine and the named processes spend inside the block."""
    processes = {name: psutil.Process(pid) for name, pid in pids.items()}
    machine_before = _machine_busy_seconds()
    before = {name: _process_seconds(process) for name, process in processes.items()}
    use = CpuUse()
    yield use
    use.machine = _machine_busy_seconds() - machine_before
    use.processes = {name: _process_seconds(p) - before[name] for name, p in processes.items()}


async def _timed_call(call: Callable[[int], Awaitable[Any]], i: int, result: LoadResult) -> None:
    """One call into ``result``: its latency, or an error."""
    started = time.perf_counter()
    try:
        await call(i)
    except grpc.aio.AioRpcError:
        result.errors += 1
        return
    result.latencies_ms.append((time.perf_counter() - started) * 1000)


async def closed_loop(
    call: Callable[[int], Awaitable[Any]], concurrency: int, seconds: float, first: int = 0
) -> LoadResult:
    """``concurrency`` workers calling back to back for ``seconds``; the calls are numbered
    from ``first``."""
    result = LoadResult(concurrency, seconds)
    end = time.perf_counter() + seconds
    counter = iter(range(first, 10**9))

    async def worker() -> None:
        while time.perf_counter() < end:
            await _timed_call(call, next(counter), result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def _echo_call(
    echo: token_service_pb2_grpc.TokenServiceAsyncStub,
) -> Callable[[int], Awaitable[Any]]:
    """The baseline: an IssueToken request to the echo server, which answers it at once."""

    async def call(i: int) -> Any:
        request = token_service_pb2.IssueTokenRequest(user_id=f"bench-user-{i:06d}", schedule_id=1)
        return await echo.IssueToken(request, timeout=10)

    return call


@dataclass
class Measured:
    """A call's interleaved runs (``interleaved``): its load and the CPU it cost."""

    load: LoadResult
    cpu: CpuUse

    def figures(self) -> dict[str, Any]:
        """The run's summary, its CPU per call, and how busy the machine was, for
        results.json. A machine short of 100% busy is bounded by something other than
        its CPU: a lock, or one process's single thread."""
        calls = len(self.load.latencies_ms)
        return {
            **self.load.summary(),
            "cpu_ms_per_call": self.cpu.per_call_ms(calls),
            "machine_busy_percent": self.busy_percent(),
        }

    def busy_percent(self) -> float:
        """The machine's CPU over the run as a share of all its cores, in percent."""
        capacity = self.load.seconds * (os.cpu_count() or 1)
        return round(self.cpu.machine / capacity * 100, 1) if capacity else float("nan")


async def interleaved(
    calls: dict[str, tuple[Callable[[int], Awaitable[Any]], dict[str, int]]],
    concurrency: int,
    seconds: float,
    turns: int = TURNS,
) -> dict[str, Measured]:
    """Each call's closed loop for ``seconds`` in all, cut into ``turns`` turns that take
    their turns with the others' (in turn order, then reversed: ABBA), each with the CPU of
    the processes named beside it.

    A target and its baseline measured one after the other, ten seconds each, could fall in
    different stretches of a shared machine, whose speed moves by tens of percent. Taking
    turns measures both in the same stretches. (It does not make the ratio independent of
    the stretch: a slow one costs the services more than the echo server.) Calls go on
    numbering where their last turn stopped, so no token is used twice.
    """
    measured = {name: Measured(LoadResult(concurrency, 0.0), CpuUse()) for name in calls}
    for turn in range(turns):
        order = list(calls) if turn % 2 == 0 else list(reversed(calls))
        for name in order:
            call, pids = calls[name]
            made = measured[name].load.calls
            with cpu_meter({"load generator": os.getpid(), **pids}) as cpu:
                run = await closed_loop(call, concurrency, seconds / turns, first=made)
            measured[name].load.add(run)
            measured[name].cpu.add(cpu)
    return measured


async def paced_load(
    call: Callable[[int], Awaitable[Any]], per_second: float, seconds: float, callers: int = 32
) -> LoadResult:
    """Calls started at a steady ``per_second`` (open loop, up to ``callers`` in flight)."""
    result = LoadResult(callers, seconds)
    start = time.perf_counter()
    slots = iter(range(int(per_second * seconds)))

    async def caller() -> None:
        for i in slots:
            await asyncio.sleep(max(0.0, start + i / per_second - time.perf_counter()))
            await _timed_call(call, i, result)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return result


class RssSampler:
    """Peak resident memory of some processes, sampled in the background."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak_mb = dict.fromkeys(pids, 0.0)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            for name, process in self._processes.items():
                with contextlib.suppress(psutil.Error):
                    rss = process.memory_info().rss / 2**20
                    self.peak_mb[name] = max(self.peak_mb[name], rss)
            await asyncio.sleep(0.2)


@dataclass
class Bench:
    """One database's run."""

    args: argparse.Namespace
    database: str
    database_url: str
    bootstrap: str
    results: dict[str, Any] = field(default_factory=dict)
    drain_curve: list[tuple[float, int]] = field(default_factory=list)
    cdfs: dict[str, list[float]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    cpu_pids: dict[str, int] = field(default_factory=dict)

    async def run(
        self, echo_address: str, uvloop_echo_address: str, redis: RedisBaseline | None
    ) -> dict[str, Any]:
        """Every measurement on this database (``redis``: the Redis queue, if installed)."""
        await asyncio.to_thread(migrate, self.database_url)
        cluster = Cluster(
            self.database_url,
            self.bootstrap,
            ROOT / ".run" / "bench-logs",
            extra_env={
                "ADMIN_TOKEN": ADMIN,
                "WAITING_TOPIC": f"bench-waiting-{secrets.token_hex(3)}",
                "TOKEN_EVENTS_TOPIC": f"bench-events-{secrets.token_hex(3)}",
                "CONSUMER_GROUP": f"bench-{secrets.token_hex(3)}",
                "LOG_LEVEL": "WARNING",
                "TOKEN_API_WORKERS": str(self.args.token_api_workers),
            },
        )
        try:
            token_api = await asyncio.to_thread(cluster.start, "token_api")
            activator = await asyncio.to_thread(cluster.start, "activator")
            pids = {"token_api": token_api.process.pid, "activator": activator.process.pid}
            self.pids = pids
            self.cpu_pids = {**pids, **_server_pids(self.bootstrap, self.database_url)}
            async with (
                RssSampler(pids) as rss,
                grpc.aio.insecure_channel(token_api.address) as token_channel,
                grpc.aio.insecure_channel(activator.address) as activator_channel,
                grpc.aio.insecure_channel(echo_address) as echo_channel,
                grpc.aio.insecure_channel(uvloop_echo_address) as uvloop_echo_channel,
                Database(self.database_url, pool_size=4) as db,
            ):
                tokens = token_service_pb2_grpc.TokenServiceStub(token_channel)
                schedules = schedule_service_pb2_grpc.ScheduleServiceStub(token_channel)
                queue = queue_status_service_pb2_grpc.QueueStatusServiceStub(activator_channel)
                echo = token_service_pb2_grpc.TokenServiceStub(echo_channel)
                uvloop_echo = token_service_pb2_grpc.TokenServiceStub(uvloop_echo_channel)
                sections = self.args.sections
                # Every section is measured on a warm broker, whichever of them run, and
                # starts once the activator has placed what the sections before it issued.
                await self._warm_up(tokens, schedules)
                caught_up = self._caught_up(cluster.extra_env)
                if "issue" in sections:
                    await caught_up("issue")
                    async with _spread_stubs(token_api.address, self.args.token_api_workers) as to:
                        await self._issue_throughput(
                            to or [tokens], schedules, echo, uvloop_echo, redis
                        )
                if "release" in sections:
                    await caught_up("release")
                    async with _spread_stubs(token_api.address, self.args.token_api_workers) as to:
                        await self._release_latency(to or [tokens], schedules, echo)
                if "to_active" in sections:
                    await caught_up("to_active")
                    await self._issue_to_active(tokens, schedules, db)
                if "drain" in sections:
                    await caught_up("drain")
                    await self._drain(tokens, schedules, db)
                if "status" in sections:
                    await caught_up("status")
                    await self._status(queue, schedules, db)
                if "gate" in sections:
                    await caught_up("gate")
                    await self._gate(tokens, schedules, token_channel)
                if "prequeue" in sections:
                    await caught_up("prequeue")
                    await self._prequeue(schedules, db)
                if "many" in sections:
                    await caught_up("many")
                    await self._many_schedules(tokens, queue, db)
                self.results["peak_rss_mb"] = {k: round(v, 1) for k, v in rss.peak_mb.items()}
        finally:
            await asyncio.to_thread(cluster.stop_all)
            await _delete_topics(
                self.bootstrap,
                [cluster.extra_env["WAITING_TOPIC"], cluster.extra_env["TOKEN_EVENTS_TOPIC"]],
            )
        return self.results

    async def _issue_throughput(
        self,
        tokens: list[token_service_pb2_grpc.TokenServiceAsyncStub],
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        echo: token_service_pb2_grpc.TokenServiceAsyncStub,
        uvloop_echo: token_service_pb2_grpc.TokenServiceAsyncStub,
        redis: RedisBaseline | None,
    ) -> None:
        levels = []
        for concurrency in self.args.concurrency:
            schedule_id = random.randrange(10**9)
            await self._set_capacity(schedules, schedule_id, DEFAULT_CAPACITY)

            async def issue(i: int, schedule_id: int = schedule_id) -> Any:
                return await tokens[i % len(tokens)].IssueToken(
                    token_service_pb2.IssueTokenRequest(
                        user_id=f"bench-user-{i:06d}", schedule_id=schedule_id
                    ),
                    timeout=10,
                )

            # CPU per call shows what bounds the ratio once both runs saturate the cores.
            calls = {"echo": (_echo_call(echo), {}), "issue": (issue, self.cpu_pids)}
            if redis is not None and concurrency == RUSH_CONCURRENCY:
                calls["redis"] = (redis.call(schedule_id), redis.pids)
            runs = await interleaved(
                calls,
                concurrency,
                self.args.seconds,
                self.args.turns,
            )
            level: dict[str, dict[str, Any]] = {
                name: measured.figures() for name, measured in runs.items()
            }
            if concurrency == RUSH_CONCURRENCY:
                same_loop = await closed_loop(
                    _echo_call(uvloop_echo), concurrency, self.args.seconds
                )
                level["echo_uvloop"] = same_loop.summary()
            levels.append(level)
            self.cdfs[f"echo c={concurrency}"] = runs["echo"].load.latencies_ms
            self.cdfs[f"IssueToken c={concurrency}"] = runs["issue"].load.latencies_ms
        self.results["issue_levels"] = levels

    def _caught_up(self, env: dict[str, str]) -> Callable[[str], Awaitable[None]]:
        """A wait before a section until the activator has consumed ``waiting-token`` to its
        end, recorded in ``catch_up_seconds``.

        The warm-up issues at c=32 faster than the activator places tokens on PostgreSQL,
        so the next section began with the activator still 0.1-0.25 s behind: run right
        after the warm-up, the tokens of issue->ACTIVE's first 100 ms waited for that
        backlog, and they were its p99 (80-90 ms; 18-22 ms with this wait). It waits a
        tenth of a second or so.
        """
        waits: dict[str, float] = self.results.setdefault("catch_up_seconds", {})

        async def wait(section: str) -> None:
            started = time.perf_counter()
            await wait_for_consumer(
                self.bootstrap, env["CONSUMER_GROUP"], env["WAITING_TOPIC"], CATCH_UP_SECONDS
            )
            waits[section] = round(time.perf_counter() - started, 2)

        return wait

    async def _warm_up(
        self,
        tokens: token_service_pb2_grpc.TokenServiceAsyncStub,
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
    ) -> None:
        """Issue into a schedule of its own until the broker's JIT compiler goes quiet.

        A fresh broker spends its first 1-2 minutes under load compiling: its compiler threads
        took a third of a core and half its CPU, and IssueToken's rate doubled once they
        stopped. A broker in service has long finished, so the figures are taken after.
        """
        schedule_id = random.randrange(10**9)
        await self._set_capacity(schedules, schedule_id, DEFAULT_CAPACITY)
        broker = self.cpu_pids.get("broker")

        async def issue(i: int) -> Any:
            return await tokens.IssueToken(
                token_service_pb2.IssueTokenRequest(
                    user_id=f"warm-{i:06d}", schedule_id=schedule_id
                ),
                timeout=10,
            )

        started, quiet_steps, issued = time.perf_counter(), 0, 0
        broker_ms: list[float] = []  # the broker's CPU per issue, step by step
        while (
            quiet_steps < WARM_QUIET_STEPS
            and time.perf_counter() - started < self.args.warmup_seconds
        ):
            compiled_before = _compiler_seconds(broker)
            with cpu_meter({"broker": broker} if broker else {}) as cpu:
                # New users every step: a user's second issue is answered from the I5
                # read without a produce, and would leave the broker's produce path cold.
                step = await closed_loop(issue, 32, WARM_UP_STEP_SECONDS, first=issued)
            issued += step.calls
            broker_ms.append(cpu.per_call_ms(len(step.latencies_ms)).get("broker", 0.0))
            compiling = (_compiler_seconds(broker) - compiled_before) / WARM_UP_STEP_SECONDS
            quiet_steps = quiet_steps + 1 if compiling < WARM_COMPILER_SHARE else 0
        self.results["warm_up_seconds"] = round(time.perf_counter() - started, 1)
        self.results["warm_up_broker_ms_per_call"] = broker_ms

    async def _release_latency(
        self,
        tokens: list[token_service_pb2_grpc.TokenServiceAsyncStub],
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        echo: token_service_pb2_grpc.TokenServiceAsyncStub,
    ) -> None:
        """CompleteToken at c=32 on ACTIVE tokens: releases refill slots, so at rush rate
        they bound admissions. Measured twice: with nobody waiting (a freed slot wakes
        nobody), and with a line as long again, where each release admits the next. Each
        takes turns with the echo baseline its p99 is compared with."""
        for waiting, key in ((False, "complete"), (True, "complete_refilling")):
            await self._complete_at_c32(tokens, schedules, echo, waiting=waiting, key=key)

    async def _complete_at_c32(
        self,
        tokens: list[token_service_pb2_grpc.TokenServiceAsyncStub],
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        echo: token_service_pb2_grpc.TokenServiceAsyncStub,
        *,
        waiting: bool,
        key: str,
    ) -> None:
        # More tokens than the fastest run completes, so that none is completed twice; the
        # last WARM_UP_TOKENS of them warm the release path up first, as IssueToken's
        # warm-up does for the issue path. Measured cold, the first turn carried the
        # release writer's first connection and statements: a tail of 25-45 ms in that
        # turn against 13-16 ms in the later ones (timed inside token_api).
        concurrency, count = RUSH_CONCURRENCY, 24000
        schedule_id = random.randrange(10**9)
        await self._set_capacity(schedules, schedule_id, count)
        async with Database(self.database_url, pool_size=2) as db:
            async with db.transaction() as session:
                line = 2 * count if waiting else count
                ids = await load_pending(session, schedule_id, line, datetime.now(UTC))
            await self._wait_active(db, schedule_id, count, 120)
            if waiting:
                await _vacuumed(self.database_url)

        async def complete(i: int) -> Any:
            request = token_service_pb2.CompleteTokenRequest(token_id=ids[i % count])
            return await tokens[i % len(tokens)].CompleteToken(request, timeout=10)

        # The measured calls are numbered from 0 and never reach the warm-up's tokens.
        await closed_loop(complete, concurrency, WARM_UP_SECONDS, first=count - WARM_UP_TOKENS)
        runs = await interleaved(
            {"complete": (complete, self.cpu_pids), "echo": (_echo_call(echo), {})},
            concurrency,
            min(self.args.seconds, 5.0),
            self.args.turns,
        )
        self.results[key] = {**runs["complete"].figures(), "echo": runs["echo"].figures()}
        label = " refilling" if waiting else ""
        self.cdfs[f"CompleteToken{label} c={concurrency}"] = runs["complete"].load.latencies_ms

    async def _gate(
        self,
        tokens: token_service_pb2_grpc.TokenServiceAsyncStub,
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        channel: grpc.aio.Channel,
    ) -> None:
        """What a reservation service pays per request to check a holder: TokenGate's
        offline pass check (signature, claims) against the ValidateToken RPC at c=32."""
        holders = 32
        schedule_id = random.randrange(10**9)
        await self._set_capacity(schedules, schedule_id, holders)
        issued = [
            (
                await tokens.IssueToken(
                    token_service_pb2.IssueTokenRequest(
                        user_id=f"gate-{i}", schedule_id=schedule_id
                    ),
                    timeout=10,
                )
            ).token.token_id
            for i in range(holders)
        ]
        held = [await self._admission_pass(tokens, token_id) for token_id in issued]
        verifier = PassVerifier(KeySet(GrpcJwks(channel)))
        await verifier.start()
        timings = []
        for i in range(5000):
            started = time.perf_counter()
            await verifier.verify(held[i % holders], schedule_id)
            timings.append((time.perf_counter() - started) * 1e6)

        async def validate(i: int) -> Any:
            request = token_service_pb2.ValidateTokenRequest(
                token_id=issued[i % holders], schedule_id=schedule_id
            )
            return await tokens.ValidateToken(request, timeout=10)

        run = await closed_loop(validate, RUSH_CONCURRENCY, min(self.args.seconds, 5.0))
        self.results["gate"] = {
            "verify_us": {
                "mean": round(sum(timings) / len(timings), 1),
                "p50": round(pct(timings, 0.5), 1),
                "p99": round(pct(timings, 0.99), 1),
            },
            "algorithm": "ES256",
            "validate_rpc": run.summary(),
        }

    async def _prequeue(
        self, schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub, db: Database
    ) -> None:
        """A sale opening with a pre-queue of ``line`` tokens: from opens_at to the first
        ``capacity`` admissions (by draw key), and to the commit of the renumbered line."""
        schedule_id, capacity = random.randrange(10**9), 1000
        await self._set_opening(schedules, schedule_id, capacity, timedelta(hours=1))
        async with db.transaction() as session:
            await load_pending(session, schedule_id, self.args.line, datetime.now(UTC))
        await _vacuumed(self.database_url)
        opens_at = await self._set_opening(schedules, schedule_id, capacity, timedelta(seconds=2))
        first_seen, drawn_seen, drawn_at = None, None, None
        deadline = time.perf_counter() + 600
        while drawn_seen is None and time.perf_counter() < deadline:
            async with db.transaction(read_only=True) as session:
                row = await session.get(ScheduleRow, schedule_id, populate_existing=True)
                if first_seen is None and row is not None and row.active_count > 0:
                    first_seen = datetime.now(UTC)
                if row is not None and row.drawn_at is not None:
                    drawn_seen, drawn_at = datetime.now(UTC), row.drawn_at
            await asyncio.sleep(0.01)
        if drawn_seen is None:
            raise RuntimeError("the pre-queue was not drawn within 10 minutes")
        self.results["prequeue"] = {
            "tokens": self.args.line,
            "capacity": capacity,
            # As a reader sees it, polling every 10 ms.
            "first_admissions_seen_ms": _ms_between(opens_at, first_seen),
            "renumber_started_ms": _ms_between(opens_at, drawn_at),
            "draw_committed_seen_ms": _ms_between(opens_at, drawn_seen),
        }

    async def _set_opening(
        self,
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        schedule_id: int,
        capacity: int,
        after: timedelta,
    ) -> datetime:
        opens_at = datetime.now(UTC) + after
        stamp = Timestamp()
        stamp.FromDatetime(opens_at)
        await schedules.UpsertSchedule(
            schedule_service_pb2.UpsertScheduleRequest(
                schedule=schedule_service_pb2.Schedule(
                    schedule_id=schedule_id,
                    capacity=capacity,
                    active_ttl_seconds=QUIET_TTL_SECONDS,
                    opens_at=stamp,
                )
            ),
            metadata=AUTH,
            timeout=10,
        )
        return opens_at

    @staticmethod
    async def _admission_pass(
        tokens: token_service_pb2_grpc.TokenServiceAsyncStub, token_id: str
    ) -> str:
        for _ in range(600):
            token = (
                await tokens.GetToken(
                    token_service_pb2.GetTokenRequest(token_id=token_id), timeout=10
                )
            ).token
            if token.admission_pass:
                return token.admission_pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"token {token_id} was not admitted")

    async def _issue_to_active(
        self,
        tokens: token_service_pb2_grpc.TokenServiceAsyncStub,
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        db: Database,
    ) -> None:
        schedule_id = random.randrange(10**9)
        await self._set_capacity(schedules, schedule_id, 1_000_000)
        rate, count = self.args.rate, int(self.args.rate * self.args.seconds)
        start = time.perf_counter()
        calls: list[asyncio.Task[Any]] = []

        async def issue(i: int) -> Any:
            request = token_service_pb2.IssueTokenRequest(
                user_id=f"steady-{i}", schedule_id=schedule_id
            )
            return await tokens.IssueToken(request, timeout=10)

        for i in range(count):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            calls.append(asyncio.create_task(issue(i)))
        await asyncio.gather(*calls, return_exceptions=True)
        waits = await self._activation_waits(db, schedule_id, count)
        self.cdfs["issue->ACTIVE"] = waits
        self.results["to_active"] = {
            "offered_per_second": rate,
            "tokens": count,
            "admitted": len(waits),
            "p50_ms": round(pct(waits, 0.5), 2),
            "p99_ms": round(pct(waits, 0.99), 2),
        }

    async def _activation_waits(self, db: Database, schedule_id: int, count: int) -> list[float]:
        deadline = time.perf_counter() + 30
        while True:
            async with db.transaction(read_only=True) as session:
                rows = (
                    await session.execute(
                        select(TokenRow.issued_at, TokenRow.activated_at).where(
                            TokenRow.schedule_id == schedule_id
                        )
                    )
                ).all()
            done = [r for r in rows if r.activated_at is not None]
            if len(done) >= count or time.perf_counter() > deadline:
                return [(r.activated_at - r.issued_at).total_seconds() * 1000 for r in done]
            await asyncio.sleep(0.2)

    async def _drain(
        self,
        tokens: token_service_pb2_grpc.TokenServiceAsyncStub,
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        db: Database,
    ) -> None:
        schedule_id = random.randrange(10**9)
        await self._set_capacity(schedules, schedule_id, 1000)
        async with db.transaction() as session:
            await load_pending(session, schedule_id, 2000, datetime.now(UTC))
        await self._wait_active(db, schedule_id, 1000, 60)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        await self._set_capacity(schedules, schedule_id, 2000)
        await self._wait_active(db, schedule_id, 2000, 30, interval=0.005)
        visible_ms = (time.perf_counter() - started) * 1000
        async with db.transaction(read_only=True) as session:
            times = (
                (
                    await session.execute(
                        select(TokenRow.activated_at).where(
                            TokenRow.schedule_id == schedule_id, TokenRow.activated_at >= started_at
                        )
                    )
                )
                .scalars()
                .all()
            )
        offsets = sorted((t - started_at).total_seconds() * 1000 for t in times if t)
        if not offsets:
            raise RuntimeError("the drain admitted nobody")
        # The curve comes from the activation timestamps, not from a poller's view.
        self.drain_curve = [(ms, 1000 + i + 1) for i, ms in enumerate(offsets)]
        self.results["drain"] = {
            "freed": 1000,
            "admitted": len(offsets),
            "ms_by_database_clock": round(offsets[-1], 1),
            # Until a reader sees all of them: also the passes' signing and the commit.
            "ms_until_visible": round(visible_ms, 1),
        }

    async def _set_capacity(
        self,
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        schedule_id: int,
        capacity: int,
    ) -> None:
        await schedules.UpsertSchedule(
            schedule_service_pb2.UpsertScheduleRequest(
                schedule=schedule_service_pb2.Schedule(
                    schedule_id=schedule_id,
                    capacity=capacity,
                    active_ttl_seconds=QUIET_TTL_SECONDS,
                )
            ),
            metadata=AUTH,
            timeout=10,
        )

    async def _wait_active(
        self, db: Database, schedule_id: int, wanted: int, timeout: float, interval: float = 0.05
    ) -> None:
        """Poll until ``wanted`` tokens of the schedule were admitted (or time runs out)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            async with db.transaction(read_only=True) as session:
                active = (
                    await session.execute(
                        select(func.count()).where(
                            TokenRow.schedule_id == schedule_id, TokenRow.activated_at.is_not(None)
                        )
                    )
                ).scalar_one()
            if active >= wanted:
                return
            await asyncio.sleep(interval)

    async def _status(
        self,
        queue: queue_status_service_pb2_grpc.QueueStatusServiceAsyncStub,
        schedules: schedule_service_pb2_grpc.ScheduleServiceAsyncStub,
        db: Database,
    ) -> None:
        schedule_id = random.randrange(10**9)
        await self._set_capacity(schedules, schedule_id, 1)
        line = self.args.line
        loaded = time.perf_counter()
        async with db.transaction() as session:
            token_ids = await load_pending(session, schedule_id, line, datetime.now(UTC))
        load_seconds = time.perf_counter() - loaded
        await _vacuumed(self.database_url)
        rng = random.Random(3)

        async def status(_: int) -> Any:
            return await queue.GetTokenStatus(
                queue_status_service_pb2.GetTokenStatusRequest(token_id=rng.choice(token_ids)),
                timeout=10,
            )

        # One client measures the latency of a lookup; eight show what saturation does to it.
        single = await closed_loop(status, 1, self.args.seconds)
        saturated = await closed_loop(status, 8, self.args.seconds)
        self.cdfs[f"GetTokenStatus, {line:,} pending, c=1"] = single.latencies_ms
        self.cdfs[f"GetTokenStatus, {line:,} pending, c=8"] = saturated.latencies_ms
        self.results["status"] = {
            "pending": line,
            "bulk_load_seconds": round(load_seconds, 1),
            **single.summary(),
            "at_concurrency_8": saturated.summary(),
        }

    async def _many_schedules(
        self,
        tokens: token_service_pb2_grpc.TokenServiceAsyncStub,
        queue: queue_status_service_pb2_grpc.QueueStatusServiceAsyncStub,
        db: Database,
    ) -> None:
        """Idle cost at 10,000 and 100,000 schedules, TTL precision under status load, and
        IssueToken spread over 10,000 schedules."""
        base = random.randrange(1, 10**9) * 10**6
        far = datetime.now(UTC) + timedelta(hours=1)
        ids = list(range(base, base + 10_000))
        started = time.perf_counter()
        await _bulk_lines(db, ids[:1000], [far] * 1000, pending_ttl_seconds=3600)
        await _bulk_lines(db, ids[1000:], [far] * 9000)
        idle: dict[str, float] = {}
        changes: dict[str, int] = {}
        idle["10000"], changes["10000"] = await self._idle_window(db)
        more = list(range(base + 10_000, base + 100_000))
        await _bulk_lines(db, more, [far] * len(more), with_waiters=False)
        idle["100000"], changes["100000"] = await self._idle_window(db)
        loaded_seconds = time.perf_counter() - started
        self.results["many_schedules"] = {
            "bulk_load_seconds": round(loaded_seconds, 1),
            "idle_activator_cpu_percent": idle,
            # Tokens admitted or ended meanwhile: work, not idleness, when above zero.
            "idle_window_token_changes": changes,
            "ttl": await self._ttl_lateness(queue, db, base + 100_000),
            "issue_spread": await self._issue_spread(tokens, db, base + 200_000),
        }

    async def _idle_window(self, db: Database) -> tuple[float, int]:
        """The activator's CPU, in % of one core, over a quiet stretch, and how many tokens
        were admitted or ended in it."""
        await asyncio.sleep(2)  # let the sweeps of the bulk load settle
        seconds: float = self.args.idle_seconds
        started = datetime.now(UTC)
        with cpu_meter({"activator": self.pids["activator"]}) as use:
            await asyncio.sleep(seconds)
        changed = await _token_changes(db, started, datetime.now(UTC))
        return round(float(use.processes["activator"]) / seconds * 100, 2), changed

    async def _ttl_lateness(
        self,
        queue: queue_status_service_pb2_grpc.QueueStatusServiceAsyncStub,
        db: Database,
        base: int,
    ) -> dict[str, Any]:
        """1,000 ACTIVE TTLs due over ``ttl_spread`` seconds, status calls running meanwhile:
        how late each holder expired and its waiter was admitted (from the stored times)."""
        spread, count = self.args.ttl_spread, 1000
        start = datetime.now(UTC) + timedelta(seconds=3)
        expiries = [start + timedelta(seconds=spread * i / count) for i in range(count)]
        ids = list(range(base, base + count))
        lines = await _bulk_lines(db, ids, expiries)
        waiters = [waiter for _, waiter in lines.values() if waiter]
        rng = random.Random(5)

        async def status(_: int) -> Any:
            return await queue.GetTokenStatus(
                queue_status_service_pb2.GetTokenStatusRequest(token_id=rng.choice(waiters)),
                timeout=10,
            )

        load = await paced_load(status, STATUS_CALLS_PER_SECOND, spread + 5)
        holders = {holder: schedule_id for schedule_id, (holder, _) in lines.items()}
        async with db.transaction(read_only=True) as session:
            rows = (
                (await session.execute(select(TokenRow).where(TokenRow.schedule_id.in_(ids))))
                .scalars()
                .all()
            )
        expiry_of = {r.schedule_id: r.expires_at for r in rows if r.token_id in holders}
        held = [(r.expires_at, r.ended_at) for r in rows if r.token_id in holders]
        refilled = [
            (expiry_of[r.schedule_id], r.activated_at) for r in rows if r.token_id not in holders
        ]
        return {
            "due": count,
            "over_seconds": spread,
            "status_calls_per_second": round(load.rps, 1),
            "expired_late": _lateness_ms(held),  # type: ignore[arg-type]
            "refilled_late": _lateness_ms(refilled),  # type: ignore[arg-type]
        }

    async def _issue_spread(
        self, tokens: token_service_pb2_grpc.TokenServiceAsyncStub, db: Database, base: int
    ) -> dict[str, Any]:
        """IssueToken at c=32 spread over 10,000 fresh schedules, and how long after the last
        issue the last of them became ACTIVE."""
        rng = random.Random(7)

        async def issue(i: int) -> Any:
            return await tokens.IssueToken(
                token_service_pb2.IssueTokenRequest(
                    user_id=f"spread-{i:07d}", schedule_id=base + rng.randrange(10_000)
                ),
                timeout=10,
            )

        run = await closed_loop(issue, 32, self.args.seconds)
        last_issue = datetime.now(UTC)
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            async with db.transaction(read_only=True) as session:
                pending, last_active = (
                    await session.execute(
                        select(
                            func.count().filter(TokenRow.activated_at.is_(None)),
                            func.max(TokenRow.activated_at),
                        ).where(TokenRow.schedule_id.between(base, base + 10_000))
                    )
                ).one()
            if pending == 0:
                break
            await asyncio.sleep(0.1)
        into_one = [
            level["issue"]["rps"]
            for level in self.results.get("issue_levels", [])
            if level["issue"]["concurrency"] == 32
        ]
        last: datetime | None = last_active  # func.max keeps the column's UTCDateTime
        return {
            **run.summary(),
            "one_schedule_rps": into_one[0] if into_one else None,
            "still_pending": pending,
            "all_active_after_last_issue_ms": (
                round((last - last_issue).total_seconds() * 1000, 1)
                if last is not None and pending == 0
                else None
            ),
        }


async def wait_for_consumer(bootstrap: str, group: str, topic: str, timeout: float) -> None:
    """Wait until ``group`` has committed the end offset of every partition of ``topic``
    (or ``timeout`` seconds have passed, then go on: the figures say how long it waited)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await reader.start()
    try:
        deadline = time.perf_counter() + timeout
        (described,) = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        if not partitions:
            raise RuntimeError(f"the topic {topic!r} has no partitions")
        while time.perf_counter() < deadline:
            ends = await reader.end_offsets(partitions)
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            behind = [
                tp
                for tp, end in ends.items()
                if end > 0 and (tp not in committed or committed[tp].offset < end)
            ]
            if not behind:
                return
            await asyncio.sleep(0.05)
    finally:
        await reader.stop()
        await admin.close()


async def _topic_count(bootstrap: str) -> int:
    """How many topics the broker holds besides its own (``__consumer_offsets``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        return sum(1 for topic in await admin.list_topics() if not topic.startswith("__"))
    finally:
        await admin.close()


async def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Delete a run's own topics, so that a broker kept between runs does not grow by a few
    partitions a run (each stays a directory, and in every metadata answer)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(topics)
    except KafkaError as exc:  # the figures are taken; a leftover topic is only untidy
        print(f"bench: could not delete the topics {topics}: {exc}")
    finally:
        await admin.close()


async def kafka_floor(bootstrap: str, rounds: int) -> dict[str, float]:
    """The aiokafka produce-to-consume round trip on the same broker, one record at a time."""
    topic = f"bench-floor-{secrets.token_hex(3)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=20, auto_offset_reset="earliest"
    )
    await producer.start()
    await producer.send_and_wait(topic, b"warm-up")
    await consumer.start()
    await consumer.getone()
    trips = []
    try:
        for i in range(rounds):
            started = time.perf_counter()
            await producer.send_and_wait(topic, str(i).encode())
            await consumer.getone()
            trips.append((time.perf_counter() - started) * 1000)
    finally:
        await consumer.stop()
        await producer.stop()
        await _delete_topics(bootstrap, [topic])
    return {"p50_ms": round(pct(trips, 0.5), 2), "p99_ms": round(pct(trips, 0.99), 2)}


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """The measured values the targets are stated in (those of the sections that ran)."""
    figures: dict[str, float] = {}
    rush = _rush_level(results)
    if rush is not None:
        figures["issue_rps_ratio"] = round(rush["issue"]["rps"] / rush["echo"]["rps"], 3)
        figures["issue_p99_ms"] = rush["issue"]["p99_ms"]
        figures["issue_p99_over_echo"] = round(rush["issue"]["p99_ms"] / rush["echo"]["p99_ms"], 2)
        if "echo_uvloop" in rush:
            same_loop = rush["issue"]["rps"] / rush["echo_uvloop"]["rps"]
            figures["issue_rps_ratio_same_loop"] = round(same_loop, 3)
        if "redis" in rush:
            figures["redis_rps_ratio"] = round(rush["redis"]["rps"] / rush["echo"]["rps"], 3)
            figures["redis_p99_over_echo"] = round(
                rush["redis"]["p99_ms"] / rush["echo"]["p99_ms"], 2
            )
            figures["issue_rps_over_redis"] = round(rush["issue"]["rps"] / rush["redis"]["rps"], 3)
    for key in ("complete", "complete_refilling"):
        if key in results:
            figures[f"{key}_p50_ms"] = results[key]["p50_ms"]
            figures[f"{key}_p99_ms"] = results[key]["p99_ms"]
            over_echo = results[key]["p99_ms"] / results[key]["echo"]["p99_ms"]  # its own turns
            figures[f"{key}_p99_over_echo"] = round(over_echo, 2)
    if "to_active" in results:
        figures["to_active_p50_ms"] = results["to_active"]["p50_ms"]
        figures["to_active_p99_ms"] = results["to_active"]["p99_ms"]
    if "drain" in results:
        figures["drain_ms"] = results["drain"]["ms_by_database_clock"]
        figures["drain_visible_ms"] = results["drain"]["ms_until_visible"]
    if "status" in results:
        figures["status_p99_ms"] = results["status"]["p99_ms"]
    if "prequeue" in results:
        figures["prequeue_first_admission_ms"] = results["prequeue"]["first_admissions_seen_ms"]
        figures["prequeue_draw_ms"] = results["prequeue"]["draw_committed_seen_ms"]
    if "gate" in results:
        figures["gate_verify_us"] = results["gate"]["verify_us"]["mean"]
        figures["validate_p50_ms"] = results["gate"]["validate_rpc"]["p50_ms"]
        figures["validate_p99_ms"] = results["gate"]["validate_rpc"]["p99_ms"]
    figures["activator_rss_mb"] = results["peak_rss_mb"]["activator"]
    return {**figures, **_many_schedule_figures(results.get("many_schedules"))}


def _rush_level(results: dict[str, Any]) -> dict[str, Any] | None:
    """The issue level the rush targets are stated at: c=32, else the highest measured."""
    levels = results.get("issue_levels") or []
    if not levels:
        return None
    at_32 = [level for level in levels if level["issue"]["concurrency"] == RUSH_CONCURRENCY]
    chosen: dict[str, Any] = (
        at_32 or sorted(levels, key=lambda level: level["issue"]["concurrency"])
    )[-1]
    return chosen


def _many_schedule_figures(many: dict[str, Any] | None) -> dict[str, float]:
    if not many:
        return {}
    spread = many["issue_spread"]
    nan = float("nan")
    return {
        "idle_cpu_10k": many["idle_activator_cpu_percent"]["10000"],
        "idle_cpu_100k": many["idle_activator_cpu_percent"]["100000"],
        "ttl_late_p99_ms": many["ttl"]["expired_late"]["p99_ms"],
        "refill_late_p99_ms": many["ttl"]["refilled_late"]["p99_ms"],
        "spread_all_active_ms": spread["all_active_after_last_issue_ms"] or nan,
        "spread_rps_share": round(spread["rps"] / spread["one_schedule_rps"], 3)
        if spread["one_schedule_rps"]
        else nan,
    }


def print_table(name: str, results: dict[str, Any]) -> None:
    """The short table on stdout."""
    print(f"\n== {name} ({os.cpu_count()} cores) ==")
    header = ("level", "echo rps", "issue rps", "ratio", "issue p50", "issue p99", "cpu/call")
    print(
        f"{header[0]:<8}{header[1]:>10}{header[2]:>11}{header[3]:>7}{header[4]:>11}{header[5]:>11}"
        f"{header[6]:>19}"
    )
    for level in results.get("issue_levels", []):
        echo, issue = level["echo"], level["issue"]
        cpu = f"{_machine_ms(echo):.2f} -> {_machine_ms(issue):.2f} ms"
        print(
            f"c={issue['concurrency']:<6}{echo['rps']:>10.0f}{issue['rps']:>11.0f}"
            f"{issue['rps'] / echo['rps']:>7.2f}{issue['p50_ms']:>9.1f}ms{issue['p99_ms']:>9.1f}ms"
            f"{cpu:>19}"
        )
    print("(cpu/call: the whole machine's CPU per completed call, echo -> IssueToken)")
    for level in results.get("issue_levels", []):
        if "redis" in level:
            redis, echo = level["redis"], level["echo"]
            print(
                f"Redis queue, c={redis['concurrency']}: {redis['rps']:.0f} rps"
                f" ({redis['rps'] / echo['rps']:.2f} of echo), p99 {redis['p99_ms']:.1f} ms,"
                f" cpu/call {_machine_ms(redis):.2f} ms"
            )
    for level in results.get("issue_levels", [])[-1:]:
        _print_bound(
            f"IssueToken, c={level['issue']['concurrency']}", level["issue"], level["echo"]
        )
    for key, label in (("complete", "nobody waiting"), ("complete_refilling", "a line waiting")):
        if key in results:
            run = results[key]
            _print_bound(f"CompleteToken, {label}", run, run["echo"])
    print(f"{'target':<40}{'measured':>10}  {'goal':>8}  met")
    for key, value in ratios(results).items():
        label, op, goal = TARGETS[key]
        met = value >= goal if op == ">=" else value <= goal
        print(f"{label:<40}{value:>10.2f}  {op}{goal:>6}  {'yes' if met else 'NO'}")
    changed = (results.get("many_schedules") or {}).get("idle_window_token_changes")
    if changed:
        print(f"tokens admitted or ended in the idle windows (0 = idle): {changed}")


def _print_bound(label: str, run: dict[str, Any], echo: dict[str, Any]) -> None:
    """A measured call's rate against echo's, how busy the machine was, and where each
    call's CPU went: what bounds the call."""
    shares = ", ".join(f"{k} {v:.2f}" for k, v in run.get("cpu_ms_per_call", {}).items())
    print(
        f"{label}: {run['rps']:.0f} rps ({run['rps'] / echo['rps']:.2f} of echo),"
        f" machine {run.get('machine_busy_percent', float('nan')):.0f}% busy"
        f" (echo {echo.get('machine_busy_percent', float('nan')):.0f}%);"
        f" CPU ms per call: {shares}"
    )


def _machine_ms(run: dict[str, Any]) -> float:
    return float(run.get("cpu_ms_per_call", {}).get("machine", float("nan")))


def plot(all_results: dict[str, Bench], path: Path) -> None:
    """Latency CDFs and the drain curve, one row per database."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(all_results), 2, figsize=(13, 5 * len(all_results)), squeeze=False
    )
    for row, (name, bench) in enumerate(all_results.items()):
        cdf_axis, drain_axis = axes[row]
        for label, values in bench.cdfs.items():
            if values:
                ordered = sorted(values)
                cdf_axis.plot(
                    ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)], label=label
                )
        cdf_axis.set_xscale("log")
        cdf_axis.set_xlabel("latency (ms, log)")
        cdf_axis.set_ylabel("share of requests")
        cdf_axis.set_title(f"{name}: latency CDFs")
        cdf_axis.legend(fontsize=7)
        if bench.drain_curve:
            # From the raise (0 ms, nobody new) to each admission; one UPDATE admits many
            # tokens at the same instant, which shows as a vertical step.
            drain_axis.step(
                [0.0, *(t for t, _ in bench.drain_curve)],
                [0, *(a - 1000 for _, a in bench.drain_curve)],
                where="post",
            )
            drain_axis.set_xlim(left=0)
        drain_axis.set_xlabel("ms after the capacity raise")
        drain_axis.set_ylabel("newly admitted (of 1,000)")
        drain_axis.set_title(f"{name}: queue drain")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


@contextlib.contextmanager
def echo_server(event_loop: str = "asyncio") -> Iterator[str]:
    """The ceiling's server, as its own process like token_api, on ``event_loop``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.echo_server", str(port), event_loop], cwd=ROOT
    )
    try:
        wait_listening(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class RedisBaseline:
    """The Redis sorted-set queue of tools.redis_queue: a channel to it, and its processes."""

    channel: grpc.aio.Channel
    pids: dict[str, int]

    def call(self, schedule_id: int) -> Callable[[int], Awaitable[Any]]:
        """IssueToken on the Redis queue, for new users in ``schedule_id``."""
        stub = token_service_pb2_grpc.TokenServiceStub(self.channel)

        async def issue(i: int) -> Any:
            request = token_service_pb2.IssueTokenRequest(
                user_id=f"bench-user-{i:06d}", schedule_id=schedule_id
            )
            return await stub.IssueToken(request, timeout=10)

        return issue


@contextlib.asynccontextmanager
async def redis_baseline(wanted: bool) -> AsyncIterator[RedisBaseline | None]:
    """The Redis queue for the life of the block; None if not wanted or not installed."""
    if not wanted:
        yield None
        return
    with redis_queue() as started:
        if started is None:
            yield None
            return
        address, (server, store) = started
        async with grpc.aio.insecure_channel(address) as channel:
            yield RedisBaseline(channel, {"redis queue": server, "redis-server": store})


def postgres_url() -> str | None:
    """A database on the project's PostgreSQL script cluster, or None without PostgreSQL."""
    env = {**os.environ, "PG_PORT": "55432"}
    started = subprocess.run([str(ROOT / "scripts/postgres.sh"), "start"], env=env, check=False)
    if started.returncode != 0:
        return None
    admin_url = "postgresql+asyncpg://postgres@127.0.0.1:55432/postgres"
    return create_postgres_database(admin_url, prefix="waiting_bench")


async def _bulk_lines(
    db: Database,
    schedule_ids: list[int],
    expires_at: list[datetime],
    *,
    pending_ttl_seconds: int = 0,
    with_waiters: bool = True,
) -> dict[int, tuple[str, str | None]]:
    async with db.transaction() as session:
        return await load_held_lines(
            session,
            schedule_ids,
            expires_at,
            datetime.now(UTC),
            pending_ttl_seconds=pending_ttl_seconds,
            with_waiters=with_waiters,
        )


async def _token_changes(db: Database, start: datetime, end: datetime) -> int:
    """How many tokens were admitted, or ended, between ``start`` and ``end``."""
    async with db.transaction(read_only=True) as session:
        moments = (TokenRow.activated_at, TokenRow.ended_at)
        counts = [
            await session.scalar(select(func.count()).where(m >= start, m < end)) for m in moments
        ]
    return sum(count or 0 for count in counts)


async def _vacuumed(database_url: str) -> None:
    """On PostgreSQL, vacuum and analyze ``tokens`` after a bulk load, as autovacuum has done
    for a line that grew over minutes: else it does it during the measurement, which then
    shares two cores with a vacuum of up to a million rows just written."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return
    connection = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        await connection.execute("VACUUM (ANALYZE) tokens")
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _spread_stubs(
    address: str, workers: int
) -> AsyncIterator[list[token_service_pb2_grpc.TokenServiceAsyncStub]]:
    """With several token_api workers, stubs on two connections per worker, for calls to be
    spread over them: SO_REUSEPORT spreads connections, not calls, and one channel is one
    connection (a process's channels share it unless each keeps its own subchannels). With
    one worker, none: the section's one channel is used."""
    if workers <= 1:
        yield []
        return
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(
                grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            )
            for _ in range(2 * workers)
        ]
        yield [token_service_pb2_grpc.TokenServiceStub(channel) for channel in channels]


def _ms_between(start: datetime, end: datetime | None) -> float:
    return round((end - start).total_seconds() * 1000, 1) if end is not None else float("nan")


def _lateness_ms(rows: list[tuple[datetime, datetime | None]]) -> dict[str, float]:
    late = [(ended - due).total_seconds() * 1000 for due, ended in rows if ended is not None]
    return {
        "count": len(late),
        "missing": len(rows) - len(late),
        "p50_ms": round(pct(late, 0.5), 1),
        "p99_ms": round(pct(late, 0.99), 1),
        "max_ms": round(max(late, default=0.0), 1),
    }


async def amain(args: argparse.Namespace) -> None:
    """Run every database and write the outputs."""
    port, data_dir = 29092, ROOT / ".run" / "kafka-bench"
    if not is_listening(port):
        # A broker the bench starts starts empty. Topics left by other runs (tests and
        # experiments pointed at it) cost it CPU: with 3,600 partitions it used 4% of a
        # core while idle, 1.5% once they were gone. ``broker_topics`` shows how many.
        await asyncio.to_thread(shutil.rmtree, data_dir, True)
    started_broker = await asyncio.to_thread(start_broker, port, data_dir)
    bootstrap = f"127.0.0.1:{port}"
    benches: dict[str, Bench] = {}
    output: dict[str, Any] = {"cores": os.cpu_count(), "mode": "full" if args.full else "quick"}
    sqlite_path = ROOT / ".run" / f"bench-{secrets.token_hex(3)}.sqlite3"
    databases = {"sqlite": f"sqlite+aiosqlite:///{sqlite_path}"}
    try:
        output["broker_topics"] = await _topic_count(bootstrap)
        output["kafka_floor"] = await kafka_floor(bootstrap, 200)
        if "postgres" in args.databases:
            url = await asyncio.to_thread(postgres_url)
            if url:
                databases["postgresql"] = url
            else:
                print("bench: PostgreSQL could not be started (see above); measuring SQLite only")
        with echo_server() as echo_address, echo_server("uvloop") as uvloop_echo_address:
            async with redis_baseline("issue" in args.sections and not args.no_redis) as redis:
                for name, url in databases.items():
                    if name.startswith(tuple(args.databases)):
                        benches[name] = Bench(args, name, url, bootstrap)
                        output[name] = await benches[name].run(
                            echo_address, uvloop_echo_address, redis
                        )
                        output[name]["ratios"] = ratios(output[name])
    finally:
        for leftover in sqlite_path.parent.glob(f"{sqlite_path.name}*"):  # with -wal and -shm
            leftover.unlink()
        if "postgresql" in databases:  # a full run leaves 1.4 GB of tokens in it
            await asyncio.to_thread(drop_postgres_database, databases["postgresql"])
        if started_broker:
            await asyncio.to_thread(stop_broker, port, data_dir)
    OUT.mkdir(exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(output, indent=2))
    plot(benches, OUT / "latency.png")
    print(
        f"\nKafka produce->consume floor: p50 {output['kafka_floor']['p50_ms']} ms, "
        f"p99 {output['kafka_floor']['p99_ms']} ms"
    )
    for name in benches:
        print_table(name, output[name])
    print(f"\nwrote {OUT / 'results.json'} and {OUT / 'latency.png'}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make bench``."""
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1,000,000 pending for the status run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    parser.add_argument(
        "--turns",
        type=int,
        default=TURNS,
        help="turns a target and its echo baseline take, each (1: one after the other)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rate", type=float, default=200.0, help="issues/s for issue->ACTIVE")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=150.0,
        help="most seconds of issue load before measuring (until the broker's JIT is quiet)",
    )
    parser.add_argument(
        "--no-redis",
        action="store_true",
        help="leave out the Redis queue baseline (measured when redis-server is installed)",
    )
    parser.add_argument(
        "--token-api-workers", type=int, default=1, help="TOKEN_API_WORKERS of token_api"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="which measurements to run (default: all)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.line = 1_000_000 if args.full else 100_000
    args.idle_seconds = 10.0 if args.full else 5.0
    args.ttl_spread = 30.0 if args.full else 10.0
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
