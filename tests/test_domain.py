"""Pure rules: validation, transitions, slots and positions. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from waiting_core import domain, messages, retry, token_ids
from waiting_core.domain import ScheduleSettings, TokenStatus
from waiting_core.errors import FailedPrecondition, InvalidArgument
from waiting_core.token_ids import TokenIds


def test_derived_token_ids_are_stable_per_generation_and_recognised() -> None:
    ids = TokenIds(b"k" * 32)
    first = ids.derive(7, "alice", 0)

    assert ids.derive(7, "alice", 0) == first  # racing issues agree
    assert len({first, ids.derive(7, "alice", 1), ids.derive(8, "alice", 0)}) == 3
    assert len({ids.derive(7, f"u{i}", 0) for i in range(1000)}) == 1000
    assert domain.validate_token_id(first) == first
    assert len(first) == token_ids.ID_LENGTH
    assert ids.schedule_of(first) == 7


def test_only_ids_derived_with_the_secret_are_recognised() -> None:
    ids = TokenIds(b"k" * 32)
    theirs = TokenIds(b"x" * 32).derive(7, "alice", 0)
    mine = ids.derive(7, "alice", 0)
    tampered = ("B" if mine[0] == "A" else "A") + mine[1:]

    assert ids.schedule_of(theirs) is None
    assert ids.schedule_of(tampered) is None
    assert ids.schedule_of(token_ids.random_id()) is None
    assert ids.schedule_of("x" * 32) is None  # an id issued before ids were derived
    assert domain.validate_token_id("x" * 32) == "x" * 32


@pytest.mark.parametrize("bad", ["", "   ", "x" * 129, "a\nb", "\x7f"])
def test_bad_user_ids_are_rejected_naming_the_field(bad: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^user_id: "):
        domain.validate_user_id(bad)


@pytest.mark.parametrize("bad", [0, -1, -(2**63)])
def test_schedule_ids_must_be_positive(bad: int) -> None:
    with pytest.raises(InvalidArgument, match=r"^schedule_id: "):
        domain.validate_schedule_id(bad)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (ScheduleSettings(1, capacity=0), "capacity"),
        (ScheduleSettings(1, capacity=1_000_001), "capacity"),
        (ScheduleSettings(1, active_ttl_seconds=0), "active_ttl_seconds"),
        (ScheduleSettings(1, pending_ttl_seconds=-1), "pending_ttl_seconds"),
        (ScheduleSettings(1, admit_rate_per_second=-1), "admit_rate_per_second"),
        (ScheduleSettings(0), "schedule_id"),
    ],
)
def test_invalid_schedule_settings_name_the_field(settings: ScheduleSettings, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        settings.validated()


def test_free_slots_never_go_negative_after_capacity_is_lowered() -> None:
    assert domain.free_slots(capacity=10, active_count=4) == 6
    assert domain.free_slots(capacity=3, active_count=5) == 0


def test_position_skips_tokens_that_left_the_line() -> None:
    # seq 11..20 issued after head 10; tokens 12 and 15 cancelled while pending.
    assert domain.pending_position(seq=11, head_seq=10, departed_between=0) == 1
    assert domain.pending_position(seq=16, head_seq=10, departed_between=2) == 4


@pytest.mark.parametrize(
    ("current", "target", "changes"),
    [
        (TokenStatus.ACTIVE, TokenStatus.COMPLETED, True),
        (TokenStatus.COMPLETED, TokenStatus.COMPLETED, False),
        (TokenStatus.PENDING, TokenStatus.CANCELLED, True),
        (TokenStatus.ACTIVE, TokenStatus.CANCELLED, True),
        (TokenStatus.CANCELLED, TokenStatus.CANCELLED, False),
    ],
)
def test_allowed_and_repeated_releases(
    current: TokenStatus, target: TokenStatus, changes: bool
) -> None:
    assert domain.check_release(current, target) is changes


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (TokenStatus.PENDING, TokenStatus.COMPLETED),
        (TokenStatus.EXPIRED, TokenStatus.COMPLETED),
        (TokenStatus.CANCELLED, TokenStatus.COMPLETED),
        (TokenStatus.COMPLETED, TokenStatus.CANCELLED),
        (TokenStatus.EXPIRED, TokenStatus.CANCELLED),
    ],
)
def test_wrong_transitions_are_failed_preconditions(
    current: TokenStatus, target: TokenStatus
) -> None:
    with pytest.raises(FailedPrecondition, match=current.value):
        domain.check_release(current, target)


def test_wait_is_unknown_before_any_admission() -> None:
    assert domain.estimate_wait(places_ahead=5, rate_per_second=0.0) == domain.WaitEstimate(
        0, False
    )
    assert domain.estimate_wait(places_ahead=0, rate_per_second=0.0).known


def test_wait_follows_the_moving_window_rate() -> None:
    rate = domain.updated_rate(0.0, elapsed_seconds=0.0, admitted=60)  # 60 in a 30 s window

    assert rate == pytest.approx(2.0)
    assert domain.estimate_wait(10, rate) == domain.WaitEstimate(5, True)
    assert domain.decayed_rate(rate, domain.RATE_WINDOW_SECONDS) == pytest.approx(2.0 / 2.718, 0.01)


def test_rate_bucket_holds_one_second_and_unlimited_means_free_slots() -> None:
    assert domain.rate_allowance(5, allowance=0.0, elapsed_seconds=100.0) == 5.0
    assert domain.rate_allowance(5, allowance=1.0, elapsed_seconds=0.2) == pytest.approx(2.0)
    assert domain.admissions_allowed(free=10, allowance=2.7) == 2
    assert domain.admissions_allowed(free=10, allowance=domain.rate_allowance(0, 0.0, 0.0)) == 10


def test_rate_correction_removes_the_start_up_bias() -> None:
    # A steady 4/s for 10 s, fed one second at a time.
    rate = 0.0
    for _ in range(10):
        rate = domain.updated_rate(rate, elapsed_seconds=1.0, admitted=4)

    assert rate < 2.0  # the raw average still counts the empty part of the window
    assert domain.corrected_rate(rate, age_seconds=10.0) == pytest.approx(4.0, rel=0.1)


def test_abandonment_waits_a_whole_ttl_after_it_is_switched_on() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    ttl = 60

    assert domain.stale_before(0, now - timedelta(hours=1), now) is None  # off
    assert domain.stale_before(ttl, None, now) is None  # never switched on
    assert domain.stale_before(ttl, now - timedelta(seconds=30), now) is None  # too recent
    assert domain.stale_before(ttl, now - timedelta(hours=1), now) == now - timedelta(seconds=ttl)


def test_an_update_keeps_what_it_does_not_name() -> None:
    current = ScheduleSettings(5, capacity=5, active_ttl_seconds=60, pending_ttl_seconds=30)
    update = domain.ScheduleUpdate(5, {"admit_rate_per_second": 10})

    assert update.applied_to(current) == ScheduleSettings(5, 5, 60, 30, 10)


def test_replace_all_starts_from_the_defaults() -> None:
    current = ScheduleSettings(5, capacity=5, active_ttl_seconds=60, pending_ttl_seconds=30)
    update = domain.ScheduleUpdate(5, {"capacity": 9}, replace_all=True)

    assert update.applied_to(current) == ScheduleSettings(5, capacity=9)


def test_an_update_to_a_bad_value_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"^schedule.capacity: "):
        domain.ScheduleUpdate(5, {"capacity": 0}).applied_to(ScheduleSettings(5))


@pytest.mark.parametrize(
    ("paths", "populated", "expected"),
    [
        ([], ["capacity"], (["capacity"], False)),
        (["*"], ["capacity"], (["capacity"], True)),
        (["pending_ttl_seconds", "pending_ttl_seconds"], [], (["pending_ttl_seconds"], False)),
    ],
)
def test_mask_fields(
    paths: list[str], populated: list[str], expected: tuple[list[str], bool]
) -> None:
    assert domain.mask_fields(paths, populated) == expected


@pytest.mark.parametrize("paths", [["colour"], ["*", "capacity"], ["schedule_id"]])
def test_bad_masks_name_update_mask(paths: list[str]) -> None:
    with pytest.raises(InvalidArgument, match=r"^update_mask: "):
        domain.mask_fields(paths, [])


@pytest.mark.parametrize("attempt", [1, 2, 5, 30])
def test_backoff_stays_in_the_upper_half_of_its_capped_window(attempt: int) -> None:
    ceiling = min(3.0, retry.BASE_SECONDS * 2**attempt)
    waits = [retry.backoff(attempt, cap=3.0) for _ in range(200)]

    assert all(ceiling / 2 <= wait <= ceiling for wait in waits)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 27, 18, 30, 1, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2030, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=9))),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 27, 18, 30, 1, 5),  # naive: UTC, as protobuf takes it
    ],
)
def test_timestamps_match_protobufs_own_conversion(moment: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(moment)

    assert messages.timestamp(moment) == expected
