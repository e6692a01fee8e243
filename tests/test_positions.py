"""Exact positions in a line of 100,000 PENDING tokens after cancellations, via the real RPCs."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from tests.helpers import RPC_TIMEOUT, System, queue_status, set_capacity, token_status, wait_counts
from waiting.v1 import token_service_pb2
from waiting_core.bulk import load_pending

LINE = 100_000


async def test_positions_are_exact_at_100k_after_cancellations(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 1)
    async with system.token_api.database.transaction() as session:
        token_ids = await load_pending(session, schedule_id, LINE, datetime.now(UTC))
    await wait_counts(system, schedule_id, active=1, pending=LINE - 1)  # the sweeper admits #1
    rng = random.Random(7)
    cancelled_seqs = sorted({2, 3, 50, *rng.sample(range(4, LINE + 1), 60)})
    for seq in cancelled_seqs:
        await system.tokens.CancelToken(
            token_service_pb2.CancelTokenRequest(token_id=token_ids[seq - 1]), timeout=RPC_TIMEOUT
        )
    remaining = sorted(set(range(2, LINE + 1)) - set(cancelled_seqs))
    expected_position = {seq: index + 1 for index, seq in enumerate(remaining)}

    samples = [4, 5, 51, LINE, *rng.sample(remaining, 150)]
    for seq in samples:
        status = await token_status(system, token_ids[seq - 1])
        assert status.position == expected_position[seq], f"seq {seq}"

    assert (await queue_status(system, schedule_id)).pending_count == len(remaining)
