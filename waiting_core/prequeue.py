"""The pre-queue: who arrived before a sale opened, and the verifiable draw of their order.

No I/O here. When ``opens_at`` is first set, a secret 32-byte seed is drawn and its SHA-256
(the commitment) is published. Every token issued before ``opens_at`` (the cohort) keeps its
draw key, HMAC-SHA256(key=seed, message=token_id), from its placement on. At the opening the
first ``capacity`` are admitted by draw key, ascending (an index range), and then the line
is renumbered once: the cohort by draw key, ahead of everyone who came later (who keep
their issue order). After that the seed is revealed, so anyone can check it against the
commitment and recompute the order.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime

from waiting_core.errors import FailedPrecondition, InvalidArgument

SEED_BYTES = 32


class PrequeueOrder(enum.StrEnum):
    """How the cohort of a sale's pre-queue is ordered at its opening."""

    SHUFFLED = "SHUFFLED"
    FIFO = "FIFO"


def new_seed() -> bytes:
    """A fresh secret seed for a draw."""
    return secrets.token_bytes(SEED_BYTES)


def commitment(seed: bytes) -> str:
    """The published commitment to a seed: its hex SHA-256."""
    return hashlib.sha256(seed).hexdigest()


def draw_key(seed: bytes, token_id: str) -> bytes:
    """A token's place in the drawn order: HMAC-SHA256(key=seed, message=token_id)."""
    return hmac.new(seed, token_id.encode(), hashlib.sha256).digest()


def drawn_order(seed: bytes, token_ids: Sequence[str]) -> list[str]:
    """The cohort's token ids in drawn order."""
    return sorted(token_ids, key=lambda token_id: draw_key(seed, token_id))


def cohort_key(
    opens_at: datetime | None,
    seed: bytes | None,
    order: PrequeueOrder,
    token_id: str,
    issued_at: datetime,
) -> bytes | None:
    """The draw key a token placed in line keeps: its HMAC when it was issued before a
    shuffled sale opened (it belongs to the cohort); None otherwise. The line after the
    opening is the cohort by draw key, then everyone else by issue order."""
    if opens_at is None or seed is None or order != PrequeueOrder.SHUFFLED:
        return None
    return draw_key(seed, token_id) if issued_at < opens_at else None


def in_prequeue(opens_at: datetime | None, now: datetime) -> bool:
    """Whether a schedule with this opening has not opened yet at ``now``."""
    return opens_at is not None and now < opens_at


def awaiting_draw(opens_at: datetime | None, drawn_at: datetime | None) -> bool:
    """Whether the schedule's line is not in its drawn order yet: before the opening, and
    from it until the draw has renumbered the line."""
    return opens_at is not None and drawn_at is None


def has_opened(
    opens_at: datetime | None, drawn_at: datetime | None, has_tokens: bool, now: datetime
) -> bool:
    """Whether a schedule's sale has opened: it was drawn, its opens_at came, or it never
    had one and has tokens already (they were admitted as they came)."""
    if drawn_at is not None:
        return True
    if opens_at is None:
        return has_tokens
    return opens_at <= now


def check_opening_change(
    before: tuple[datetime | None, PrequeueOrder],
    after: tuple[datetime | None, PrequeueOrder],
    *,
    now: datetime,
    opened: bool,
) -> None:
    """Refuse a change of opens_at or prequeue_order that makes no sense or comes too late.

    A new opens_at must be in the future (INVALID_ARGUMENT); clearing it opens the sale now.
    ``opened``: the sale opened already (its opens_at came, it was drawn, or, with no
    opens_at, it has tokens). Then neither may change (FAILED_PRECONDITION).
    """
    moved, reordered = after[0] != before[0], after[1] != before[1]
    if not (moved or reordered):
        return
    if moved and after[0] is not None and after[0] <= now:
        raise InvalidArgument("schedule.opens_at", "must be in the future")
    if opened:
        field = "schedule.opens_at" if moved else "schedule.prequeue_order"
        raise FailedPrecondition(f"{field}: the sale has opened; it can no longer change")
