"""``make smoke``: the README's way, checked by real clients.

Starts the system with ``make run``, runs the README's grpcurl lines verbatim (taken from
the block under ``<!-- smoke: ... -->``, so the docs cannot rot), checks what they print,
probes both services with grpc-health-probe, checks that every listener of the system is on
127.0.0.1, and stops everything with ``make stop``, as a script would.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import subprocess
import sys
import time

import psutil

from tools.system import ROOT, go_bin, wait_serving

GO_BIN = go_bin()
# make run's listeners: gRPC, /metrics, the broker and its controller.
PORTS = {50051, 50052, 9101, 9102, 9092, 9093}


def expect(condition: bool, what: object) -> None:
    """Stop the smoke test with ``what`` unless ``condition`` holds."""
    if not condition:
        sys.exit(f"smoke: check failed: {what}")


def readme_grpcurl_lines() -> list[str]:
    """The grpcurl and curl lines of the README's smoke block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- smoke:.*?-->\s*```sh\n(.*?)```", text, re.S)
    if block is None:
        sys.exit("smoke: no <!-- smoke --> block in README.md")
    return [line for line in block.group(1).splitlines() if line.startswith(("grpcurl ", "curl "))]


def run(line: str) -> str:
    """One shell line with the Go tools on PATH; its stdout, or exit with its stderr."""
    env = {**os.environ, "PATH": f"{GO_BIN}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        sys.exit(f"smoke: `{line}` failed:\n{result.stdout}\n{result.stderr}")
    print(f"$ {line}\n{result.stdout.strip()}{result.stderr.strip()}")
    return result.stdout + result.stderr


def check_lines(lines: list[str]) -> None:
    """Run the README's lines in order and check each answer."""
    issued = json.loads(run(lines[0]))["token"]
    expect(issued["status"] in ("TOKEN_STATUS_PENDING", "TOKEN_STATUS_ACTIVE"), issued)
    deadline = time.monotonic() + 1.0
    while True:
        token = json.loads(run(lines[1]))["token"]
        status = token["status"]
        if status == "TOKEN_STATUS_ACTIVE" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    expect(status == "TOKEN_STATUS_ACTIVE", f"not ACTIVE within a second: {status}")
    admission_pass = token.get("admission_pass", "")
    expect(admission_pass.count(".") == 2, f"no admission pass: {token}")
    queue = json.loads(run(lines[2]))
    expect(int(queue["capacity"]) >= 1 and int(queue.get("active_count", 0)) >= 1, queue)
    schedule = json.loads(run(lines[3]))["schedule"]
    expect(int(schedule["capacity"]) == 10, schedule)
    listing = run(lines[4])
    expect("waiting.v1.TokenService" in listing and "grpc.health.v1.Health" in listing, "")
    kids = {key["kid"] for key in json.loads(run(lines[5]))["keys"]}
    expect(_kid(admission_pass) in kids, f"the pass's key is not in the JWK Set {kids}")


def _kid(admission_pass: str) -> str:
    header = admission_pass.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def check_loopback_only() -> None:
    """Every listener of the running system is bound to loopback, none to all interfaces."""
    listening = [
        c.laddr
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in PORTS
    ]
    ports = {address.port for address in listening if address}
    expect(ports == PORTS, f"not all of {sorted(PORTS)} listen: {listening}")
    exposed = [address for address in listening if address and not _is_loopback(address.ip)]
    expect(not exposed, f"listening beyond loopback: {exposed}")
    print(f"smoke: ports {sorted(PORTS)} listen on loopback only: {sorted(set(listening))}")


def _is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (Java and gRPC bind those)."""
    address = ipaddress.ip_address(ip)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


def stop(system: subprocess.Popen[bytes]) -> None:
    """Stop make run the scripted way, and check that it ended."""
    subprocess.run(["make", "--no-print-directory", "stop"], cwd=ROOT, check=True)
    try:
        system.wait(timeout=60)
    except subprocess.TimeoutExpired:
        system.kill()
        sys.exit("smoke: make run was still running 60 s after make stop")


def main() -> int:
    """Start, check, stop."""
    lines = readme_grpcurl_lines()
    system = subprocess.Popen(["make", "run"], cwd=ROOT, start_new_session=True)
    try:
        wait_serving("127.0.0.1:50051", timeout=180)
        wait_serving("127.0.0.1:50052", timeout=60)
        check_lines(lines)
        for port in (50051, 50052):
            probe = run(f"grpc-health-probe -addr=localhost:{port}")
            expect("SERVING" in probe, probe)
        check_loopback_only()
    finally:
        stop(system)
    print("smoke: README lines, grpc-health-probe and loopback OK; make stop stopped make run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
