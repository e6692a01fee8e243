"""token_api's settings, read once from the environment in ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass

from waiting_core.settings import CommonSettings, non_negative, positive, setting
from waiting_core.settings import port as valid_port


@dataclass(frozen=True, slots=True)
class TokenApiSettings(CommonSettings):
    """Everything token_api can be told; see ``python -m token_api --help``."""

    host: str = setting(
        "TOKEN_API_HOST",
        "127.0.0.1",
        "address the gRPC and /metrics servers bind (0.0.0.0: every interface)",
    )
    port: int = setting("TOKEN_API_PORT", 50051, "gRPC port (0 picks a free one)", valid_port)
    metrics_port: int = setting(
        "TOKEN_API_METRICS_PORT", 9101, "Prometheus /metrics port (0 turns it off)", valid_port
    )
    outbox_poll_seconds: float = setting(
        "OUTBOX_POLL_SECONDS", 1.0, "how often the relay looks for unsent events", positive
    )
    admin_token: str = setting(
        "ADMIN_TOKEN",
        "",
        "bearer credential for ScheduleService; empty closes the admin API",
        secret=True,
    )
    producer_linger_ms: int = setting(
        "PRODUCER_LINGER_MS", 0, "Kafka producer linger; 0 sends at once", non_negative
    )
    issue_timeout_seconds: float = setting(
        "ISSUE_TIMEOUT_SECONDS",
        5.0,
        "longest IssueToken waits for Kafka's acknowledgement before UNAVAILABLE "
        "(a shorter client deadline wins)",
        positive,
    )
    group_linger_ms: float = setting(
        "GROUP_LINGER_MS",
        2.0,
        "under a rush (the previous group had 4 or more IssueToken calls, or releases), how "
        "long the next group may wait for more: fewer reads, produce requests and "
        "transactions; 0 never waits",
        non_negative,
    )
    workers: int = setting(
        "TOKEN_API_WORKERS",
        1,
        "processes serving the one port (SO_REUSEPORT): use the cores of a bigger machine",
        positive,
    )
    reuse_port: bool = setting(
        "TOKEN_API_REUSE_PORT",
        False,
        "bind with SO_REUSEPORT (set for each worker when TOKEN_API_WORKERS > 1)",
    )
