"""Group commit's gathering (``waiting_core.grouping``): who waits, and for what.

No elapsed time is asserted. Where a group must not wait, the linger is an hour, so a
wrong wait shows as a group that is not there at once. Where it must wait, the test sees
it still waiting, then lets it go.
"""

from __future__ import annotations

import asyncio

from waiting_core.grouping import CallGroups

HOUR = 3600.0


async def _at_once(groups: CallGroups[int]) -> list[int]:
    """The next group, which must be ready without any wait."""
    taker = asyncio.create_task(groups.next_group())
    await _let_the_loop_run()
    assert taker.done(), "the group waited"
    return taker.result()


async def _let_the_loop_run() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _rush(groups: CallGroups[int], size: int = 5) -> None:
    for item in range(100, 100 + size):
        groups.put(item)


async def test_outside_a_rush_a_group_takes_what_waits_and_goes() -> None:
    groups: CallGroups[int] = CallGroups(HOUR, limit=100)
    for item in range(3):  # fewer than RUSH_CALLS
        groups.put(item)
    assert await _at_once(groups) == [0, 1, 2]
    groups.put(3)
    assert await _at_once(groups) == [3]


async def test_a_group_waits_for_its_first_call() -> None:
    groups: CallGroups[int] = CallGroups(HOUR, limit=100)
    taker = asyncio.create_task(groups.next_group())
    await _let_the_loop_run()
    assert not taker.done()
    groups.put(7)
    await _let_the_loop_run()
    assert taker.result() == [7]


async def test_under_a_rush_a_group_waits_for_the_previous_groups_callers_to_come_back() -> None:
    groups: CallGroups[int] = CallGroups(HOUR, limit=100)
    _rush(groups, 5)
    assert len(await _at_once(groups)) == 5  # a rush: the next group lingers
    groups.put(10)
    taker = asyncio.create_task(groups.next_group())
    for item in range(11, 16):  # the previous group's five callers come back
        await _let_the_loop_run()
        assert not taker.done()
        groups.put(item)
    await _let_the_loop_run()  # the fifth is back: it goes, an hour early
    assert taker.result() == [10, 11, 12, 13, 14, 15]


async def test_under_a_rush_a_group_that_does_not_fill_goes_after_the_linger() -> None:
    groups: CallGroups[int] = CallGroups(0.05, limit=100)
    _rush(groups, 6)
    await groups.next_group()
    groups.put(20)
    groups.put(21)
    taker = asyncio.create_task(groups.next_group())
    await _let_the_loop_run()
    assert not taker.done()  # lingering for the callers of the group of six
    assert await asyncio.wait_for(taker, timeout=10) == [20, 21]
    groups.put(22)  # two is no rush: the next group goes at once
    assert await _at_once(groups) == [22]


async def test_no_linger_never_waits_and_no_group_exceeds_the_limit() -> None:
    groups: CallGroups[int] = CallGroups(0.0, limit=4)
    for item in range(10):
        groups.put(item)
    assert await _at_once(groups) == [0, 1, 2, 3]
    assert await _at_once(groups) == [4, 5, 6, 7]
    assert await _at_once(groups) == [8, 9]
