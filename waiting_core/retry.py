"""The one back-off rule: exponential, capped, with jitter so that retries do not align."""

from __future__ import annotations

import random

BASE_SECONDS = 0.1


def backoff(attempt: int, *, cap: float, base: float = BASE_SECONDS) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): up to base * 2**attempt.

    The wait is drawn from the upper half of the window ("equal jitter"), and the window never
    exceeds ``cap``.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not secrecy
