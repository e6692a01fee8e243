"""Pure rules of the waiting room: statuses, transitions, validation, slots and positions.

Nothing here does I/O; callers pass the clock's reading in.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from waiting_core import token_ids
from waiting_core.errors import FailedPrecondition, InvalidArgument
from waiting_core.prequeue import PrequeueOrder

MAX_USER_ID_LENGTH = 128
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

MAX_CAPACITY = 1_000_000
MAX_ACTIVE_TTL_SECONDS = 86_400
MAX_PENDING_TTL_SECONDS = 7 * 86_400
MAX_ADMIT_RATE = 1_000_000


class TokenStatus(enum.StrEnum):
    """A token's place in its lifecycle; names match the proto enum without its prefix."""

    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"

    @property
    def is_live(self) -> bool:
        """Whether the token still holds a place in line or a slot."""
        return self in LIVE_STATUSES


# The one definition of "live" (the SQL in models.py is built from it).
LIVE_STATUSES = (TokenStatus.PENDING, TokenStatus.ACTIVE)
# A token that ends in one of these without ever being ACTIVE left the line unadmitted.
DEPARTURE_STATUSES = (TokenStatus.CANCELLED, TokenStatus.EXPIRED)


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    """Admission settings of one schedule; the defaults serve schedules never configured."""

    schedule_id: int
    capacity: int = 1000
    active_ttl_seconds: int = 600
    pending_ttl_seconds: int = 0
    admit_rate_per_second: int = 0
    # The pre-queue (waiting_core.prequeue): None means the sale is open.
    opens_at: datetime | None = None
    prequeue_order: PrequeueOrder = PrequeueOrder.SHUFFLED

    def validated(self) -> ScheduleSettings:
        """Return self, or raise InvalidArgument naming the first bad field."""
        validate_schedule_id(self.schedule_id)
        _check_range("schedule.capacity", self.capacity, 1, MAX_CAPACITY)
        _check_range(
            "schedule.active_ttl_seconds", self.active_ttl_seconds, 1, MAX_ACTIVE_TTL_SECONDS
        )
        _check_range(
            "schedule.pending_ttl_seconds", self.pending_ttl_seconds, 0, MAX_PENDING_TTL_SECONDS
        )
        _check_range(
            "schedule.admit_rate_per_second", self.admit_rate_per_second, 0, MAX_ADMIT_RATE
        )
        return self


SCHEDULE_SETTINGS = (
    "capacity",
    "active_ttl_seconds",
    "pending_ttl_seconds",
    "admit_rate_per_second",
    "opens_at",
    "prequeue_order",
)
REPLACE_ALL = "*"


@dataclass(frozen=True, slots=True)
class ScheduleUpdate:
    """An UpsertSchedule: the settings to write, as AIP-134 update semantics read them.

    ``values`` holds the settings named by the mask (or implied by it). With ``replace_all``
    every setting not in ``values`` goes back to its default; otherwise it keeps its value.
    """

    schedule_id: int
    values: Mapping[str, Any]
    replace_all: bool = False

    def applied_to(self, current: ScheduleSettings) -> ScheduleSettings:
        """The settings after this update; InvalidArgument names the first bad field."""
        base = ScheduleSettings(self.schedule_id) if self.replace_all else current
        return dataclasses.replace(base, **self.values).validated()


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token issued into the log (a CreateTokenEvent), not yet placed in its line."""

    token_id: str
    user_id: str
    schedule_id: int
    issued_at: datetime


def mask_fields(paths: Sequence[str], populated: Sequence[str]) -> tuple[list[str], bool]:
    """The settings an update mask names, and whether it replaces all of them ("*").

    An empty mask means the fields the request populates. Raises InvalidArgument naming
    ``update_mask`` for an unknown path or a "*" beside other paths.
    """
    if not paths:
        return list(populated), False
    if REPLACE_ALL in paths:
        if len(paths) > 1:
            raise InvalidArgument("update_mask", '"*" must be the only path')
        return list(populated), True
    for path in paths:
        if path not in SCHEDULE_SETTINGS:
            allowed = ", ".join(SCHEDULE_SETTINGS)
            raise InvalidArgument("update_mask", f"unknown path {path!r}; paths are {allowed} or *")
    return list(dict.fromkeys(paths)), False


def _check_range(field: str, value: int, lowest: int, highest: int) -> None:
    if not lowest <= value <= highest:
        raise InvalidArgument(field, f"must be between {lowest} and {highest}, got {value}")


def validate_user_id(user_id: str) -> str:
    """Return the user id, or raise InvalidArgument for an empty, long or unprintable one."""
    if not user_id or not user_id.strip():
        raise InvalidArgument("user_id", "must not be empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidArgument("user_id", f"must be at most {MAX_USER_ID_LENGTH} characters")
    if _CONTROL_CHARS.search(user_id):
        raise InvalidArgument("user_id", "must not contain control characters")
    return user_id


def validate_schedule_id(schedule_id: int, field: str = "schedule_id") -> int:
    """Return the schedule id, or raise InvalidArgument unless it is positive."""
    if schedule_id <= 0:
        raise InvalidArgument(field, f"must be a positive integer, got {schedule_id}")
    return schedule_id


def validate_token_id(token_id: str) -> str:
    """Return the token id, or raise InvalidArgument when it cannot be one of ours."""
    if not token_id:
        raise InvalidArgument("token_id", "must not be empty")
    if not token_ids.ID_PATTERN.fullmatch(token_id):
        raise InvalidArgument(
            "token_id", f"must be {token_ids.ID_LENGTH} URL-safe base64 characters"
        )
    return token_id


def free_slots(capacity: int, active_count: int) -> int:
    """How many tokens may be admitted now; never negative when capacity was lowered."""
    return max(0, capacity - active_count)


def pending_position(seq: int, head_seq: int, departed_between: int) -> int:
    """1-based place of a PENDING token in its schedule's line.

    Tokens of a schedule get consecutive sequence numbers at issue, and admission is FIFO,
    so every token with ``seq <= head_seq`` has left the line. The tokens ahead are those
    between the head and this one, less the ones that left while pending (cancelled or
    abandoned), which the caller counts.
    """
    return seq - head_seq - departed_between


def abandons(pending_ttl_seconds: int) -> bool:
    """Whether a schedule drops PENDING tokens nobody asks about (and so records asking)."""
    return pending_ttl_seconds > 0


def stale_before(
    pending_ttl_seconds: int, abandonment_since: datetime | None, now: datetime
) -> datetime | None:
    """PENDING tokens last seen before this moment are abandoned; None: nobody is yet.

    "Seen" is recorded only while abandonment is on, so nobody is dropped before a whole TTL
    has passed since it was switched on.
    """
    if not abandons(pending_ttl_seconds) or abandonment_since is None:
        return None
    cutoff = now - timedelta(seconds=pending_ttl_seconds)
    return cutoff if abandonment_since < cutoff else None


def next_abandonment(
    earliest_seen: datetime | None, pending_ttl_seconds: int, abandonment_since: datetime | None
) -> datetime | None:
    """When the longest-unseen PENDING token will be abandoned (the rule of stale_before)."""
    if not abandons(pending_ttl_seconds) or abandonment_since is None or earliest_seen is None:
        return None
    ttl = timedelta(seconds=pending_ttl_seconds)
    return max(earliest_seen, abandonment_since) + ttl + DUE_RESOLUTION


def rate_wait_seconds(rate_per_second: int, allowance: float) -> float | None:
    """Seconds until the rate bucket allows one more admission; None without a rate limit."""
    if rate_per_second <= 0:
        return None
    return max(0.0, (1.0 - allowance) / rate_per_second)


# A due moment is a little after the deadline it serves (deadlines compare strictly), and a
# moment already past is pushed this far ahead, so that a schedule can never be re-settled
# in a tight loop.
DUE_RESOLUTION = timedelta(milliseconds=1)
PAST_DUE_DELAY = timedelta(milliseconds=50)


def next_due(now: datetime, *moments: datetime | None) -> datetime | None:
    """When a settled schedule next needs settling without an event; None: only on events.

    ``moments`` are its deadlines: the earliest ACTIVE expiry, the next abandonment, the
    rate bucket's next admission.
    """
    due = min((moment for moment in moments if moment is not None), default=None)
    if due is None:
        return None
    return max(due, now + PAST_DUE_DELAY) if due <= now else due


def tail_positions(pending_before: int, newcomers: int) -> list[int]:
    """Places of tokens just appended to a line that had ``pending_before`` PENDING tokens.

    Every PENDING token is ahead of a newcomer, so no range query is needed for them.
    """
    return list(range(pending_before + 1, pending_before + newcomers + 1))


# The transitions a client may ask for. A repeat of the transition already made is harmless:
# it returns the token as it is.
_RELEASE_SOURCES: dict[TokenStatus, tuple[TokenStatus, ...]] = {
    TokenStatus.COMPLETED: (TokenStatus.ACTIVE,),
    TokenStatus.CANCELLED: (TokenStatus.PENDING, TokenStatus.ACTIVE),
}


def check_release(current: TokenStatus, target: TokenStatus) -> bool:
    """True when the move to ``target`` must happen, False when it already has.

    Raises FailedPrecondition for a move the lifecycle does not allow.
    """
    if current == target:
        return False
    if current in _RELEASE_SOURCES[target]:
        return True
    verb = "complete" if target == TokenStatus.COMPLETED else "cancel"
    raise FailedPrecondition(f"token_id: cannot {verb} a token that is {current.value}")


# --- admission rate: a token bucket ------------------------------------------------------


def rate_allowance(rate_per_second: int, allowance: float, elapsed_seconds: float) -> float:
    """Admissions the bucket allows now: refilled at ``rate`` per second, holding one second.

    ``rate_per_second == 0`` means unlimited. The bucket holds at most one second's worth,
    so a quiet spell never turns into a burst above the configured rate.
    """
    if rate_per_second <= 0:
        return float("inf")
    return min(float(rate_per_second), allowance + rate_per_second * max(0.0, elapsed_seconds))


def admissions_allowed(free: int, allowance: float) -> int:
    """How many to admit now: the free slots, capped by the rate bucket."""
    return max(0, min(free, int(allowance))) if allowance != float("inf") else free


# --- ETA: the admission rate over an exponential moving window ---------------------------
#
# Each admission of n tokens at time t updates a per-schedule estimate r of admissions per
# second:  r(t) = r(t0) * exp(-(t - t0) / WINDOW) + n / WINDOW.
# This is an exponentially weighted moving average of the admission rate with a time constant
# of WINDOW seconds (the mean age of what it counts); between admissions it decays, so a stalled
# line shows a growing wait. A token at position p then waits about p / r seconds. Before any
# admission r is 0 and the wait is unknown.

RATE_WINDOW_SECONDS = 30.0


def decayed_rate(rate: float, elapsed_seconds: float) -> float:
    """The rate estimate ``elapsed_seconds`` after it was stored."""
    return rate * math.exp(-max(0.0, elapsed_seconds) / RATE_WINDOW_SECONDS)


def updated_rate(rate: float, elapsed_seconds: float, admitted: int) -> float:
    """The rate estimate after ``admitted`` more admissions now."""
    return decayed_rate(rate, elapsed_seconds) + admitted / RATE_WINDOW_SECONDS


MIN_RATE_AGE_SECONDS = 5.0


def corrected_rate(rate: float, age_seconds: float) -> float:
    """The estimate corrected for a window that has not filled yet.

    For a steady rate L that began ``age`` seconds ago the average above reads
    L * (1 - exp(-age / WINDOW)); dividing by that factor removes the start-up bias. The age is
    taken as at least MIN_RATE_AGE_SECONDS so that the first burst into an empty schedule
    does not read as an absurd rate.
    """
    age = max(MIN_RATE_AGE_SECONDS, age_seconds)
    return rate / (1.0 - math.exp(-age / RATE_WINDOW_SECONDS))


@dataclass(frozen=True, slots=True)
class WaitEstimate:
    """Expected wait in whole seconds; ``known`` is False before any admission was measured."""

    seconds: int
    known: bool


def estimate_wait(places_ahead: int, rate_per_second: float) -> WaitEstimate:
    """Wait for someone with ``places_ahead`` admissions to go before theirs."""
    if places_ahead <= 0:
        return WaitEstimate(0, True)
    if rate_per_second <= 1e-9:
        return WaitEstimate(0, False)
    return WaitEstimate(math.ceil(places_ahead / rate_per_second), True)
