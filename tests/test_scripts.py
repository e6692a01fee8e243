"""The project's own scripts, run as a user runs them: make run, the broker, PostgreSQL, README."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tools.system import free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_refuses_a_foreign_listener_on_its_broker_port(tmp_path: Path) -> None:
    with socket.socket() as squatter:  # not a Kafka broker, not this checkout's
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
            "TOKEN_API_PORT": str(free_port()),
            "ACTIVATOR_PORT": str(free_port()),
        }
        result = subprocess.run(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert result.returncode != 0
    assert f"127.0.0.1:{port} is already taken" in result.stderr
    assert "KAFKA_PORT=" in result.stderr  # how to move it
    assert "waiting room is up" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the cluster is that user's own")
def test_postgres_files_live_where_the_postgres_user_can_reach_them() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PG_DATA_DIR"}
    data_dir = subprocess.run(
        ["scripts/postgres.sh", "datadir"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    assert not Path(data_dir).is_relative_to(ROOT)
    reachable = subprocess.run(
        ["runuser", "-u", "postgres", "--", "test", "-x", str(Path(data_dir).parent.parent)],
        cwd="/",
        check=False,
    )
    assert reachable.returncode == 0


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize(
    "document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_every_relative_link_resolves_inside_the_clone(document: str) -> None:
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    for target in _LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{document}: {target} leaves the repository"
        assert resolved.exists(), f"{document}: {target} does not exist"


def test_token_api_workers_share_one_port_and_stop_together(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/workers.sqlite3"
    subprocess.run(
        [sys.executable, "-m", "waiting_core.migrate"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database},
        check=True,
        capture_output=True,
    )
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database,
        "TOKEN_API_PORT": str(port),
        "TOKEN_API_METRICS_PORT": "0",
        "TOKEN_API_WORKERS": "2",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # not needed to bind
    }
    supervisor = subprocess.Popen([sys.executable, "-m", "token_api"], cwd=ROOT, env=env)
    try:
        wait_listening(port, timeout=30)
        workers = psutil.Process(supervisor.pid).children()
        deadline = time.monotonic() + 30
        while (listening := _listeners(port)) != {w.pid for w in workers}:
            if time.monotonic() > deadline:  # each worker binds when it has started
                break
            time.sleep(0.1)
        supervisor.send_signal(signal.SIGTERM)
        returncode = supervisor.wait(timeout=30)
    finally:
        supervisor.kill()

    assert len(workers) == 2
    assert listening == {w.pid for w in workers}  # both bound the one port
    assert returncode == 0
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def _listeners(port: int) -> set[int]:
    """The pids listening on 127.0.0.1:port."""
    return {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid
    }
