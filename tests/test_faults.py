"""Fault tests: a load of 3,000 tokens through token_api and two activators on PostgreSQL while
a) one activator is killed with SIGKILL, b) the Kafka broker stops and restarts, or
c) the database is unreachable for 5 s. Afterwards I1-I5 must hold and nothing may be lost.

Each test runs real processes against its own broker and database, is bounded in time, and
stops everything it started. The figures go to .run/fault-report.jsonl.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy.engine import make_url

from tests.fault_harness import FaultReport, FaultRun, assert_invariants
from tests.helpers import create_postgres_database, eventually, process_cluster, settings_for
from token_api.server import TokenApi
from token_api.service import issue_wait
from tools.system import (
    cluster_bootstrap,
    kill_node,
    migrate,
    start_broker,
    start_node,
    stop_broker,
)
from tools.tcp_proxy import TcpProxy
from waiting.v1 import token_pb2, token_service_pb2, token_service_pb2_grpc
from waiting_core.events import schedule_key

pytestmark = pytest.mark.timeout(300)

BROKER_PORT = 19292
CLUSTER_PORT = 19392  # nodes on 19392, 19394, 19396 (controllers one above each)
CLUSTER_NODES = 3


@pytest.fixture(scope="module")
def fault_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A broker of the fault tests' own, so stopping it disturbs no other test."""
    data_dir = tmp_path_factory.mktemp("fault-kafka")
    start_broker(BROKER_PORT, data_dir)
    try:
        yield BROKER_PORT, data_dir
    finally:
        stop_broker(BROKER_PORT, data_dir)


@pytest.fixture(scope="module")
def fault_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A replicated cluster of three nodes (replication factor 3, min.insync.replicas=2)."""
    data_dir = tmp_path_factory.mktemp("fault-kafka-cluster")
    start_broker(CLUSTER_PORT, data_dir, CLUSTER_NODES)
    try:
        yield CLUSTER_PORT, data_dir
    finally:
        stop_broker(CLUSTER_PORT, data_dir, CLUSTER_NODES)


@pytest.fixture
async def run(
    postgres_server: str, fault_broker: tuple[int, Path], tmp_path: Path
) -> AsyncIterator[tuple[FaultRun, TcpProxy]]:
    """A fresh database behind a cuttable proxy, and a cluster that reaches it through it."""
    async with _fault_run(postgres_server, f"127.0.0.1:{fault_broker[0]}", tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def _fault_run(
    postgres_server: str, bootstrap: str, tmp_path: Path, **extra_env: str
) -> AsyncIterator[tuple[FaultRun, TcpProxy]]:
    direct_url = create_postgres_database(postgres_server)
    await asyncio.to_thread(migrate, direct_url)
    parsed = make_url(direct_url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    await proxy.start()
    proxied_url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    cluster = process_cluster(
        proxied_url, bootstrap, tmp_path / "logs", DATABASE_POOL_SIZE="5", **extra_env
    )
    fault_run = FaultRun(cluster, direct_url)
    try:
        await asyncio.to_thread(fault_run.start)
        await fault_run.configure()
        yield fault_run, proxy
    finally:
        await asyncio.to_thread(cluster.stop_all)
        await proxy.stop()


async def _run_with_fault(
    fault_run: FaultRun, name: str, inject: Callable[[], Awaitable[None]]
) -> FaultReport:
    report = FaultReport(fault=name)
    started = time.monotonic()
    progress, stop_sampling = asyncio.Event(), asyncio.Event()
    sampler = asyncio.create_task(fault_run.sample_until(stop_sampling, report))
    load = asyncio.create_task(fault_run.issue_all(report, progress))
    try:
        await asyncio.wait_for(progress.wait(), 120)
        await inject()
        await asyncio.wait_for(load, 180)
        await fault_run.wait_drained()
    finally:
        stop_sampling.set()
        load.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await load
        await sampler
    await fault_run.check(report)
    report.seconds = round(time.monotonic() - started, 1)
    report.save()
    return report


@pytest.mark.postgres
async def test_kill_9_of_an_activator_mid_run(run: tuple[FaultRun, TcpProxy]) -> None:
    fault_run, _ = run

    async def kill_one() -> None:
        await asyncio.to_thread(fault_run.activators[0].kill)

    report = await _run_with_fault(fault_run, "a) kill -9 one activator", kill_one)

    assert_invariants(report)


@pytest.mark.postgres
async def test_kafka_broker_stops_and_restarts_mid_run(
    run: tuple[FaultRun, TcpProxy], fault_broker: tuple[int, Path]
) -> None:
    fault_run, _ = run
    port, data_dir = fault_broker

    async def bounce_broker() -> None:
        await asyncio.to_thread(stop_broker, port, data_dir)
        try:
            await asyncio.sleep(5)
        finally:
            await asyncio.to_thread(start_broker, port, data_dir)

    report = await _run_with_fault(fault_run, "b) Kafka broker down ~5 s", bounce_broker)

    # The log is the record: while it is down, IssueToken answers UNAVAILABLE inside the
    # caller's deadline (5 s here), the clients retry, and every acknowledged token is kept.
    assert report.issue_retries > 0
    assert_invariants(report)


@pytest.mark.postgres
async def test_database_unreachable_for_5_seconds(run: tuple[FaultRun, TcpProxy]) -> None:
    fault_run, proxy = run

    async def cut_database() -> None:
        proxy.cut()
        await asyncio.sleep(5)
        proxy.restore()

    report = await _run_with_fault(fault_run, "c) database unreachable 5 s", cut_database)

    assert_invariants(report)


async def test_issue_fails_fast_with_unavailable_while_the_broker_is_down(
    database_url: str, fault_broker: tuple[int, Path], schedule_id: int
) -> None:
    port, data_dir = fault_broker
    token_settings, _ = settings_for(database_url, f"127.0.0.1:{port}")
    async with (
        TokenApi(token_settings) as token_api,
        grpc.aio.insecure_channel(f"127.0.0.1:{token_api.port}") as channel,
    ):
        stub = token_service_pb2_grpc.TokenServiceStub(channel)
        before = await _issue(stub, "before", schedule_id, timeout=10)
        await asyncio.to_thread(stop_broker, port, data_dir)
        try:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _issue(stub, "during", schedule_id, timeout=3)
            elapsed = time.monotonic() - started
        finally:
            await asyncio.to_thread(start_broker, port, data_dir)
        again = await _issue_when_back(stub, "before", schedule_id)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Kafka" in (caught.value.details() or "")
    assert elapsed < 3.0  # inside the caller's deadline: never DEADLINE_EXCEEDED, never a hang
    assert again.token_id == before.token_id  # the acknowledged token stands, same id


@pytest.mark.parametrize(
    ("remaining", "waits"),
    [(None, 5.0), (30.0, 5.0), (3.0, 2.7), (0.3, 0.25), (0.04, 0.0)],
)
def test_an_issue_keeps_part_of_the_callers_deadline_for_its_answer(
    remaining: float | None, waits: float
) -> None:
    # a tenth of the time left, 50-500 ms: the UNAVAILABLE outruns DEADLINE_EXCEEDED even
    # when the loop stalls for a moment (a full collection in a big process)
    assert issue_wait(5.0, remaining) == pytest.approx(waits)


async def _issue(
    stub: token_service_pb2_grpc.TokenServiceAsyncStub,
    user_id: str,
    schedule_id: int,
    timeout: float,
) -> token_pb2.Token:
    request = token_service_pb2.IssueTokenRequest(user_id=user_id, schedule_id=schedule_id)
    return (await stub.IssueToken(request, timeout=timeout)).token


async def _issue_when_back(
    stub: token_service_pb2_grpc.TokenServiceAsyncStub, user_id: str, schedule_id: int
) -> token_pb2.Token:
    replies: list[token_pb2.Token] = []

    async def answered() -> bool:
        try:
            replies.append(await _issue(stub, user_id, schedule_id, timeout=3))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return False
        return True

    await eventually(answered, timeout=90, interval=0.5)
    return replies[-1]


@pytest.mark.postgres
async def test_the_leader_of_the_busy_partition_killed_mid_run(
    postgres_server: str, fault_cluster: tuple[int, Path], tmp_path: Path
) -> None:
    port, data_dir = fault_cluster
    bootstrap = cluster_bootstrap(port, CLUSTER_NODES)
    async with _fault_run(
        postgres_server, bootstrap, tmp_path, TOPIC_REPLICATION_FACTOR=str(CLUSTER_NODES)
    ) as (fault_run, _):
        topic = fault_run.cluster.extra_env["WAITING_TOPIC"]
        killed: list[int] = []

        async def kill_the_leader() -> None:
            leader = await _leader_of(bootstrap, topic, schedule_key(fault_run.schedule_id))
            await asyncio.to_thread(kill_node, port, data_dir, CLUSTER_NODES, leader)
            killed.append(leader)

        try:
            report = await _run_with_fault(
                fault_run, "d) kill -9 of the busy partition's leader (3 nodes)", kill_the_leader
            )
        finally:
            for node in range(1, CLUSTER_NODES + 1):  # the next test gets all three back
                await asyncio.to_thread(start_node, port, data_dir, CLUSTER_NODES, node)

    # Every acknowledged token is admitted, in order, exactly once (I2-I4), within capacity.
    assert killed
    assert_invariants(report)


async def _leader_of(bootstrap: str, topic: str, key: bytes) -> int:
    """The node id (here, the node number) leading the partition that ``key`` goes to."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    leaders = {p["partition"]: p["leader"] for p in described["partitions"]}
    partitions = sorted(leaders)
    partition = DefaultPartitioner()(key, partitions, partitions)
    return int(leaders[partition])
