"""Start the real system as separate processes: the broker, migrations, token_api, activators.

Used by ``make demo``, ``make bench`` and the fault tests, which need real processes (to
kill -9 one, or to measure its memory). Each process gets its own environment; nothing is
shared but the broker and the database.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PortTaken(Exception):
    """A service died at start because one of its ports was taken meanwhile."""


def wait_serving(
    address: str, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until grpc.health.v1 at ``address`` answers SERVING; TimeoutError at once if
    ``process`` (the server's) has exited meanwhile."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if process is not None and process.poll() is not None:
                raise TimeoutError(f"{address}: its process exited ({process.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} is not SERVING after {timeout}s")
            time.sleep(0.1)


def go_bin() -> Path:
    """Where ``go install`` puts binaries (grpcurl, grpc-health-probe, buf, ghz)."""
    gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True, check=True)
    return Path(gopath.stdout.strip()) / "bin"


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while not is_listening(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout}s")
        time.sleep(0.1)


def start_broker(port: int, data_dir: Path, nodes: int = 1) -> bool:
    """Start a broker (or a cluster of ``nodes``) on ``port`` unless one answers there; True
    when this call started it."""
    if is_listening(port):
        return False
    _kafka_sh(port, data_dir, nodes, "start")
    return True


def stop_broker(port: int, data_dir: Path, nodes: int = 1) -> None:
    """Stop a broker or cluster started by :func:`start_broker`."""
    _kafka_sh(port, data_dir, nodes, "stop", check=False)


def cluster_bootstrap(port: int, nodes: int) -> str:
    """The bootstrap servers of a cluster that ``scripts/kafka.sh`` started on ``port``."""
    return ",".join(f"127.0.0.1:{port + 2 * n}" for n in range(nodes))


def node_of_port(base_port: int, broker_port: int) -> int:
    """Which node (1-based) of a cluster on ``base_port`` listens on ``broker_port``."""
    return (broker_port - base_port) // 2 + 1


def kill_node(port: int, data_dir: Path, nodes: int, node: int) -> None:
    """kill -9 one node of a cluster."""
    pid = _kafka_sh(port, data_dir, nodes, "pid", str(node)).strip()
    os.kill(int(pid), signal.SIGKILL)


def start_node(port: int, data_dir: Path, nodes: int, node: int) -> None:
    """Start one node of a cluster again."""
    _kafka_sh(port, data_dir, nodes, "start-node", str(node))


def _kafka_sh(port: int, data_dir: Path, nodes: int, *args: str, check: bool = True) -> str:
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_DATA_DIR": str(data_dir),
        "KAFKA_NODES": str(nodes),
    }
    result = subprocess.run(
        [str(ROOT / "scripts/kafka.sh"), *args],
        env=env,
        check=check,
        capture_output=True,
        text=True,
    )
    return result.stdout


def migrate(database_url: str) -> None:
    """Bring the database to the newest schema."""
    subprocess.run(
        [sys.executable, "-m", "waiting_core.migrate"],
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


@dataclass
class Service:
    """One service process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        """host:port of its gRPC server."""
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """kill -9: no shutdown, no commit, no goodbye."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait for a graceful exit (kill after ``timeout``)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class Cluster:
    """The service processes of one run, sharing a broker, a database and topic names."""

    database_url: str
    kafka_bootstrap: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    def _env(self, **overrides: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "SHUTDOWN_GRACE_SECONDS": "2",
            **self.extra_env,
            **overrides,
        }

    def start(self, module: str, port: int | None = None, wait: bool = True) -> Service:
        """Start ``python -m module`` (token_api or activator) on a free port.

        A port ``free_port`` gave can be taken by another process before the service binds
        it; a service that died of that is started again on fresh ports (twice at most).
        """
        for _ in range(2):
            try:
                return self._start(module, port, wait)
            except PortTaken:
                continue
        return self._start(module, port, wait)

    def _start(self, module: str, port: int | None, wait: bool) -> Service:
        port = port or free_port()
        variable = "TOKEN_API_PORT" if module == "token_api" else "ACTIVATOR_PORT"
        metrics_variable = variable.replace("_PORT", "_METRICS_PORT")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{module}-{port}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                env=self._env(**{variable: str(port), metrics_variable: str(free_port())}),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        service = Service(module, port, process, log_path)
        self.services.append(service)
        if wait:
            try:
                wait_serving(service.address, process=process)
            except TimeoutError as exc:
                log_text = log_path.read_text()
                if process.poll() is not None and "Address already in use" in log_text:
                    self.services.remove(service)
                    raise PortTaken(log_text) from exc
                raise RuntimeError(f"{module} did not start; its log:\n{log_text}") from exc
        return service

    def stop_all(self) -> None:
        """Stop every service gracefully."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()


def create_postgres_database(admin_url: str, prefix: str = "waiting_test") -> str:
    """A new, empty database on the PostgreSQL server of ``admin_url``; its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    url = admin_url.rsplit("/", 1)[0]
    subprocess.run([*_psql(url), "-c", f"CREATE DATABASE {name}"], check=True, timeout=60)
    return f"{url}/{name}"


def drop_postgres_database(database_url: str) -> None:
    """Drop a database that ``create_postgres_database`` made, with any connection still on
    it (a failed run's)."""
    url, name = database_url.rsplit("/", 1)
    drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    subprocess.run([*_psql(url), "-c", drop], check=False, timeout=60)


def _psql(server_url: str) -> list[str]:
    """psql on the server of ``server_url`` (no database part), as the postgres user."""
    host, port = server_url.split("@", 1)[1].split(":")
    return ["psql", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-q"]


if __name__ == "__main__":
    # ``python -m tools.system ADDRESS...``: wait until every address answers SERVING.
    for target in sys.argv[1:]:
        wait_serving(target)
