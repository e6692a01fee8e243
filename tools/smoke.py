"""``make smoke``: the README's way, checked by real clients.

Starts the system with ``make run``, runs the README's grpcurl lines verbatim (taken from
the block under ``<!-- smoke: ... -->``, so the docs cannot rot), checks what they print,
probes both services with grpc_health_probe, and stops everything with SIGINT, as Ctrl-C
would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from tools.system import ROOT, go_bin, wait_serving

GO_BIN = go_bin()
PLACEHOLDER = "<token_id from above>"


def expect(condition: bool, what: object) -> None:
    """Stop the smoke test with ``what`` unless ``condition`` holds."""
    if not condition:
        sys.exit(f"smoke: check failed: {what}")


def readme_grpcurl_lines() -> list[str]:
    """The grpcurl lines of the README's smoke block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- smoke:.*?-->\s*```sh\n(.*?)```", text, re.S)
    if block is None:
        sys.exit("smoke: no <!-- smoke --> block in README.md")
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


def run(line: str) -> str:
    """One shell line with the Go tools on PATH; its stdout, or exit with its stderr."""
    env = {**os.environ, "PATH": f"{GO_BIN}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        sys.exit(f"smoke: `{line}` failed:\n{result.stdout}\n{result.stderr}")
    print(f"$ {line}\n{result.stdout.strip()}{result.stderr.strip()}")
    return result.stdout + result.stderr


def check_lines(lines: list[str]) -> None:
    """Run the README's lines in order and check each answer."""
    issued = json.loads(run(lines[0]))["token"]
    expect(issued["status"] in ("TOKEN_STATUS_PENDING", "TOKEN_STATUS_ACTIVE"), issued)
    status_line = lines[1].replace(PLACEHOLDER, issued["token_id"])
    deadline = time.monotonic() + 1.0
    while True:
        status = json.loads(run(status_line))["token"]["status"]
        if status == "TOKEN_STATUS_ACTIVE" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    expect(status == "TOKEN_STATUS_ACTIVE", f"not ACTIVE within a second: {status}")
    queue = json.loads(run(lines[2]))
    expect(int(queue["capacity"]) >= 1 and int(queue.get("active_count", 0)) >= 1, queue)
    schedule = json.loads(run(lines[3]))["schedule"]
    expect(int(schedule["capacity"]) == 10, schedule)
    listing = run(lines[4])
    expect("waiting.v1.TokenService" in listing and "grpc.health.v1.Health" in listing, "")


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
    finally:
        os.killpg(system.pid, signal.SIGINT)
        system.wait(timeout=60)
    print("smoke: README grpcurl lines and grpc_health_probe OK; make run stopped on SIGINT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
