"""Wait until every gRPC address given answers grpc.health.v1 with SERVING (or time out)."""

from __future__ import annotations

import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 60


def wait_serving(address: str, deadline: float) -> None:
    """Poll one address until SERVING; exit with a message at the deadline."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"wait_healthy: {address} is not SERVING after {TIMEOUT_SECONDS}s")
            time.sleep(0.2)


if __name__ == "__main__":
    end = time.monotonic() + TIMEOUT_SECONDS
    for target in sys.argv[1:]:
        wait_serving(target, end)
