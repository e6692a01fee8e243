"""Group commit's gathering (``waiting_core.grouping``): who waits, and for how long."""

from __future__ import annotations

import asyncio

from waiting_core.grouping import CallGroups

LINGER = 0.2  # long against the loop's own delays, so that a wait shows


async def _timed_group(groups: CallGroups[int]) -> tuple[list[int], float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    group = await groups.next_group()
    return group, loop.time() - started


async def test_outside_a_rush_a_group_takes_what_waits_and_goes() -> None:
    groups: CallGroups[int] = CallGroups(LINGER, limit=100)
    for item in range(3):  # fewer than RUSH_CALLS
        groups.put(item)
    assert await groups.next_group() == [0, 1, 2]
    groups.put(3)
    group, waited = await _timed_group(groups)
    assert group == [3]
    assert waited < LINGER / 2


async def test_a_group_waits_for_its_first_call() -> None:
    groups: CallGroups[int] = CallGroups(LINGER, limit=100)
    taker = asyncio.create_task(groups.next_group())
    await asyncio.sleep(0.01)
    assert not taker.done()
    groups.put(7)
    assert await asyncio.wait_for(taker, 1) == [7]


async def test_under_a_rush_a_group_waits_for_the_previous_groups_callers_to_come_back() -> None:
    groups: CallGroups[int] = CallGroups(LINGER, limit=100)
    for item in range(5):
        groups.put(item)
    assert len(await groups.next_group()) == 5  # a rush: the next group lingers
    groups.put(10)
    taker = asyncio.create_task(_timed_group(groups))
    for item in range(11, 16):  # the previous group's five callers come back
        await asyncio.sleep(0.001)
        groups.put(item)
    group, waited = await asyncio.wait_for(taker, 1)
    assert group == [10, 11, 12, 13, 14, 15]
    assert waited < LINGER / 2  # it went as soon as they were there, besides the one waiting


async def test_under_a_rush_a_group_that_does_not_fill_goes_after_the_linger() -> None:
    groups: CallGroups[int] = CallGroups(LINGER, limit=100)
    for item in range(6):
        groups.put(item)
    await groups.next_group()
    groups.put(20)
    groups.put(21)
    group, waited = await _timed_group(groups)
    assert group == [20, 21]
    assert waited >= LINGER * 0.9
    groups.put(22)  # two is no rush: the next group goes at once
    group, waited = await _timed_group(groups)
    assert group == [22]
    assert waited < LINGER / 2


async def test_no_linger_never_waits_and_no_group_exceeds_the_limit() -> None:
    groups: CallGroups[int] = CallGroups(0.0, limit=4)
    for item in range(10):
        groups.put(item)
    assert await groups.next_group() == [0, 1, 2, 3]
    assert await groups.next_group() == [4, 5, 6, 7]
    group, waited = await _timed_group(groups)
    assert group == [8, 9]
    assert waited < LINGER / 2
