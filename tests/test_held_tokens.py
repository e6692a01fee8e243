"""The issue path's one read (``held_tokens``), on both stores: per asked (schedule, user),
how many tokens the user has had and whether one is live; nothing for pairs not asked."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from waiting_core import repository
from waiting_core.database import Database
from waiting_core.domain import NewToken
from waiting_core.held_tokens import Held, HeldTokens
from waiting_core.raw_reads import raw_reads_for

MOMENT = datetime(2026, 11, 27, 7, 0, tzinfo=UTC)


async def test_each_asked_pair_gets_its_own_tokens_only(
    database_url: str, new_schedule_id: Callable[[], int]
) -> None:
    first, second = new_schedule_id(), new_schedule_id()
    # ann holds a token in both schedules, bob in the first only; each is asked for one.
    newcomers = [
        NewToken(f"held-{first}-ann", "ann", first, MOMENT),
        NewToken(f"held-{first}-bob", "bob", first, MOMENT),
        NewToken(f"held-{second}-ann", "ann", second, MOMENT),
    ]
    async with Database(database_url) as database, database.transaction() as session:
        schedules = await repository.lock_schedule_states(session, [first, second])
        await repository.place_new_tokens(session, schedules, newcomers)
        await repository.store_schedule_states(session, schedules)
    reads = raw_reads_for(database_url)
    try:
        held = await HeldTokens(reads).held(
            [(first, "ann"), (second, "bob"), (second, "carol"), (first, "ann")]
        )
    finally:
        await reads.stop()
    assert held == {
        (first, "ann"): Held(tokens=1, live=True),  # asked twice, counted once
        (second, "bob"): Held(),  # bob's token is in the first schedule
        (second, "carol"): Held(),
    }


async def test_a_returning_users_tokens_are_read_per_pair(
    database_url: str, new_schedule_id: Callable[[], int]
) -> None:
    """``repository.users_tokens``, the returning users' read: every token of each asked
    pair, none of a pair not asked (ann's token in the second schedule)."""
    first, second = new_schedule_id(), new_schedule_id()
    newcomers = [
        NewToken(f"users-{first}-ann", "ann", first, MOMENT),
        NewToken(f"users-{second}-ann", "ann", second, MOMENT),
        NewToken(f"users-{second}-bob", "bob", second, MOMENT),
    ]
    async with Database(database_url) as database:
        async with database.transaction() as session:
            schedules = await repository.lock_schedule_states(session, [first, second])
            await repository.place_new_tokens(session, schedules, newcomers)
            await repository.store_schedule_states(session, schedules)
        async with database.single_read() as session:
            found = await repository.users_tokens(
                session, [(first, "ann"), (second, "bob"), (first, "bob")]
            )
    assert {pair: [t.token_id for t in tokens] for pair, tokens in found.items()} == {
        (first, "ann"): [f"users-{first}-ann"],
        (second, "bob"): [f"users-{second}-bob"],
        (first, "bob"): [],
    }
