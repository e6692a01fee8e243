"""``make bench-ghz``: a second opinion on IssueToken from ghz, a load tool nobody here wrote.

Starts the broker, token_api and an activator (SQLite unless DATABASE_URL says otherwise)
and the echo ceiling, then drives IssueToken on both with ghz at the same concurrency
through the protos, and prints rps, p50 and p99 and the ratio, as ``make bench`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
from typing import Any

import grpc

from tools.bench import echo_server
from tools.system import ROOT, Cluster, go_bin, migrate, start_broker, stop_broker
from waiting.v1 import schedule_service_pb2, schedule_service_pb2_grpc

GHZ = go_bin() / "ghz"
ADMIN = "bench-admin"


def ghz(address: str, schedule_id: int, concurrency: int, seconds: int) -> dict[str, Any]:
    """Run ghz against IssueToken at ``address``; its JSON report."""
    data = json.dumps({"user_id": "ghz-{{.RequestNumber}}", "schedule_id": schedule_id})
    result = subprocess.run(
        [
            str(GHZ),
            "--insecure",
            "--proto",
            str(ROOT / "protos/waiting/v1/token_service.proto"),
            "--import-paths",
            str(ROOT / "protos"),
            "--call",
            "waiting.v1.TokenService.IssueToken",
            "-d",
            data,
            "-c",
            str(concurrency),
            "-z",
            f"{seconds}s",
            "--format",
            "json",
            address,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def figures(report: dict[str, Any]) -> dict[str, float]:
    """rps, p50 and p99 (ms) of a ghz report."""
    percentiles = {p["percentage"]: p["latency"] / 1e6 for p in report["latencyDistribution"]}
    return {
        "rps": round(report["rps"], 1),
        "p50_ms": round(percentiles.get(50, float("nan")), 2),
        "p99_ms": round(percentiles.get(99, float("nan")), 2),
        "errors": sum(v for k, v in report.get("statusCodeDistribution", {}).items() if k != "OK"),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make bench-ghz``."""
    parser = argparse.ArgumentParser(prog="make bench-ghz", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    port, data_dir = 29092, ROOT / ".run" / "kafka-bench"
    started = start_broker(port, data_dir)
    scratch = ROOT / ".run" / f"ghz-{secrets.token_hex(3)}.sqlite3"  # a fresh file per run
    url = os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{scratch}"
    migrate(url)
    cluster = Cluster(
        url,
        f"127.0.0.1:{port}",
        ROOT / ".run" / "bench-logs",
        extra_env={"ADMIN_TOKEN": ADMIN, "LOG_LEVEL": "WARNING"},
    )
    try:
        token_api = cluster.start("token_api")
        cluster.start("activator")
        schedule_id = random.randrange(10**9)
        with grpc.insecure_channel(token_api.address) as channel:
            schedule_service_pb2_grpc.ScheduleServiceStub(channel).UpsertSchedule(
                schedule_service_pb2.UpsertScheduleRequest(
                    schedule=schedule_service_pb2.Schedule(
                        schedule_id=schedule_id, capacity=1_000_000
                    )
                ),
                metadata=(("authorization", f"Bearer {ADMIN}"),),
                timeout=10,
            )
        with echo_server() as echo_address:
            echo = figures(ghz(echo_address, 1, args.concurrency, args.seconds))
        issue = figures(ghz(token_api.address, schedule_id, args.concurrency, args.seconds))
    finally:
        cluster.stop_all()
        for leftover in scratch.parent.glob(f"{scratch.name}*"):  # with its -wal and -shm
            leftover.unlink()
        if started:
            stop_broker(port, data_dir)
    print(
        f"ghz, c={args.concurrency}, {args.seconds}s, {os.cpu_count()} cores, {url.split(':')[0]}"
    )
    print(f"  echo ceiling: {echo}")
    print(f"  IssueToken:   {issue}")
    print(
        f"  IssueToken rps / echo rps = {issue['rps'] / echo['rps']:.2f} (target >= 0.5), "
        f"p99 {issue['p99_ms']} ms (target <= 25)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
