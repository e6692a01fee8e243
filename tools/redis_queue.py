"""The competitor #9 measures itself against: a Redis sorted-set queue behind IssueToken.

The design most open-source concert queues use, as issue #9 describes it: a grpc.aio server
(on uvloop, like the services) with redis-py (hiredis parser), one Lua script per call that
checks the user's live token, takes the next number (INCR), adds the token to the
schedule's sorted set (ZADD NX) and reads its rank (ZRANK); a scheduler admits the head of
each line every 100 ms. redis-server runs with ``appendonly yes, appendfsync everysec``: an
acknowledged token can be lost with the last second of writes, where the services lose
none. Same request and response types as token_api; only IssueToken is served.

``python -m tools.redis_queue GRPC_PORT REDIS_PORT [CAPACITY]``; ``make bench`` starts both
(``redis_queue()``) when ``redis-server`` is installed, and measures it beside IssueToken.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import grpc
import redis.asyncio as redis
import uvloop
from google.protobuf.timestamp_pb2 import Timestamp

from tools.system import ROOT, free_port, wait_listening
from waiting.v1 import token_pb2, token_service_pb2, token_service_pb2_grpc

CAPACITY = 1000  # the services' default capacity of a new schedule (a third argument sets it)
ADMIT_EVERY_SECONDS = 0.1

# KEYS: the schedule's live tokens by user (hash), its counter, its line (sorted set), the
# set of schedules. ARGV: user, a fresh token id, schedule id. Returns id, rank (-1: out of
# the line, admitted), new (0/1).
ISSUE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  return {held, redis.call('ZRANK', KEYS[3], held) or -1, 0}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[3], 'NX', seq, ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
return {ARGV[2], redis.call('ZRANK', KEYS[3], ARGV[2]), 1}
"""

# ARGV: capacity. Moves the head of every line into its schedule's active set while there
# is room.
ADMIT = """
local admitted = 0
for _, schedule in ipairs(redis.call('SMEMBERS', 'schedules')) do
  local free = tonumber(ARGV[1]) - redis.call('SCARD', 'active:' .. schedule)
  if free > 0 then
    local head = redis.call('ZPOPMIN', 'line:' .. schedule, free)
    for i = 1, #head, 2 do
      redis.call('SADD', 'active:' .. schedule, head[i])
      admitted = admitted + 1
    end
  end
end
return admitted
"""


class RedisQueueService(token_service_pb2_grpc.TokenServiceServicer):
    """IssueToken as one Lua script on a Redis sorted set."""

    def __init__(self, client: redis.Redis) -> None:
        self._issue = client.register_script(ISSUE)

    async def IssueToken(
        self,
        request: token_service_pb2.IssueTokenRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> token_service_pb2.IssueTokenResponse:
        if not request.user_id or request.schedule_id <= 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "user_id and schedule_id are required"
            )
        schedule = str(request.schedule_id)
        token_id, rank, _ = await self._issue(
            keys=[f"live:{schedule}", f"seq:{schedule}", f"line:{schedule}", "schedules"],
            args=[request.user_id, secrets.token_hex(16), schedule],
        )
        now, waiting = time.time_ns(), rank >= 0
        token = token_pb2.Token(
            token_id=token_id.decode(),
            user_id=request.user_id,
            schedule_id=request.schedule_id,
            status=token_pb2.TOKEN_STATUS_PENDING if waiting else token_pb2.TOKEN_STATUS_ACTIVE,
            position=rank + 1 if waiting else 0,
            issued_at=Timestamp(seconds=now // 10**9, nanos=now % 10**9),
        )
        return token_service_pb2.IssueTokenResponse(token=token)


async def _admit_forever(client: redis.Redis, capacity: int) -> None:
    admit = client.register_script(ADMIT)
    while True:
        await admit(args=[capacity])
        await asyncio.sleep(ADMIT_EVERY_SECONDS)


async def serve(grpc_port: int, redis_port: int, capacity: int) -> None:
    """Serve until killed."""
    client = redis.Redis(port=redis_port, max_connections=64)
    server = grpc.aio.server()
    service = RedisQueueService(client)  # type: ignore[abstract]
    token_service_pb2_grpc.add_TokenServiceServicer_to_server(service, server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    admitting = asyncio.create_task(_admit_forever(client, capacity))
    try:
        await server.wait_for_termination()
    finally:
        admitting.cancel()


def redis_server_path() -> str | None:
    """The redis-server program, installed with Debian's package if missing (as root)."""
    found = shutil.which("redis-server")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"],
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            stdout=subprocess.DEVNULL,
            check=False,
        )
        found = shutil.which("redis-server")
    return found


@contextlib.contextmanager
def redis_queue(capacity: int = CAPACITY) -> Iterator[tuple[str, list[int]] | None]:
    """redis-server and the queue's gRPC server, for the life of the block: its address and
    both processes' pids, or None when redis-server is not to be had."""
    program = redis_server_path()
    if program is None:
        print("bench: redis-server is not installed; the Redis baseline is left out")
        yield None
        return
    redis_port, grpc_port = free_port(), free_port()
    ports = (grpc_port, redis_port)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as data:
        store = subprocess.Popen(
            [
                program,
                *("--port", str(redis_port), "--bind", "127.0.0.1", "--dir", data),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
            ],
            stdout=subprocess.DEVNULL,
        )
        queue: subprocess.Popen[bytes] | None = None
        try:
            wait_listening(redis_port, 10)
            queue = subprocess.Popen(
                [sys.executable, "-m", "tools.redis_queue", *map(str, ports), str(capacity)],
                cwd=ROOT,
            )
            wait_listening(grpc_port, 10)
            yield f"127.0.0.1:{grpc_port}", [queue.pid, store.pid]
        finally:
            for process in (queue, store):
                if process is not None:
                    process.terminate()
                    process.wait(10)


if __name__ == "__main__":
    capacity = int(sys.argv[3]) if len(sys.argv) > 3 else CAPACITY
    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2]), capacity))
