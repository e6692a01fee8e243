"""The activator's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass

from waiting_core.settings import CommonSettings, non_negative, positive, setting
from waiting_core.settings import port as valid_port


@dataclass(frozen=True, slots=True)
class ActivatorSettings(CommonSettings):
    """Everything the activator can be told; see ``python -m activator --help``."""

    host: str = setting(
        "ACTIVATOR_HOST",
        "127.0.0.1",
        "address the gRPC and /metrics servers bind (0.0.0.0: every interface)",
    )
    port: int = setting("ACTIVATOR_PORT", 50052, "gRPC port (0 picks a free one)", valid_port)
    metrics_port: int = setting(
        "ACTIVATOR_METRICS_PORT", 9102, "Prometheus /metrics port (0 turns it off)", valid_port
    )
    group_id: str = setting("CONSUMER_GROUP", "token-activate", "Kafka consumer group")
    fetch_max_wait_ms: int = setting(
        "FETCH_MAX_WAIT_MS",
        50,
        "longest the broker holds a fetch while no record arrives; a record on a partition "
        "that the pending fetch left out waits up to this long, so it bounds admission latency",
        positive,
    )
    fetch_idle_wait_ms: int = setting(
        "FETCH_IDLE_WAIT_MS",
        500,
        "the same while no record came for a second: then it costs no latency, and an idle "
        "activator wakes less",
        positive,
    )
    session_timeout_ms: int = setting(
        "CONSUMER_SESSION_TIMEOUT_MS",
        10_000,
        "how soon the group notices a dead activator and moves its partitions",
        positive,
    )
    batch_linger_ms: int = setting(
        "BATCH_LINGER_MS",
        60,
        "under a rush (a consumer batch of 16 records or more, come at 500 records/s or "
        "faster), how long it waits for more "
        "before it is applied: fewer, bigger transactions, at that much admission latency "
        "while the rush lasts (0: never wait)",
        non_negative,
    )
    max_batch: int = setting(
        "MAX_BATCH_RECORDS", 2000, "most records applied per consumer batch", positive
    )
    stalled_check_seconds: float = setting(
        "STALLED_CHECK_SECONDS",
        5.0,
        "how often the sweeper also looks for lines with free slots that nothing woke",
        positive,
    )
    retry_max_seconds: float = setting(
        "RETRY_MAX_SECONDS",
        5.0,
        "cap of the back-off between retries of a failed batch",
        positive,
    )
