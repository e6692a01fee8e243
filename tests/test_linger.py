"""The activator's linger (``activator.consumer._Linger``): which consumer batches wait for
more records, and for how long.

The clock is the test's: ``time.monotonic`` in the consumer module is replaced, so the
gap between two batches is exact and nothing depends on the machine's speed.
"""

from __future__ import annotations

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from activator import consumer
from activator.consumer import _Linger
from waiting.v1 import events_pb2
from waiting_core.events import EVENT_TYPE_HEADER

TP = TopicPartition("waiting-token", 0)
LINGER = 0.06  # BATCH_LINGER_MS's default, in seconds


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr("activator.consumer.time.monotonic", fake)
    return fake


def _record(
    event: type[events_pb2.CreateTokenEvent | events_pb2.SlotsFreedEvent],
) -> ConsumerRecord[bytes, bytes]:
    headers = [(EVENT_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())]
    return ConsumerRecord(TP.topic, TP.partition, 0, 0, 0, b"7", b"", None, 1, 0, headers)


def _freed(count: int = 1) -> consumer.Batch:
    return {TP: [_record(events_pb2.SlotsFreedEvent) for _ in range(count)]}


def _created(count: int) -> consumer.Batch:
    return {TP: [_record(events_pb2.CreateTokenEvent) for _ in range(count)]}


def _after(linger: _Linger, clock: _Clock, gap: float, batch: consumer.Batch) -> bool:
    clock.now += gap
    return linger.wanted(batch)


def test_a_lone_release_wakes_the_line_at_once(clock: _Clock) -> None:
    linger = _Linger(LINGER)
    assert not _after(linger, clock, 1.0, _freed())
    assert not _after(linger, clock, 0.5, _freed())


def test_freed_slots_back_to_back_wait_the_short_linger(clock: _Clock) -> None:
    linger = _Linger(LINGER)
    assert not _after(linger, clock, 1.0, _freed())
    assert _after(linger, clock, 0.005, _freed())
    assert linger._wait == _Linger.FREED_LINGER


def test_a_trickle_of_new_tokens_is_not_a_rush_even_back_to_back(clock: _Clock) -> None:
    linger = _Linger(LINGER)
    assert not _after(linger, clock, 0.005, _created(1))


def test_a_rush_of_new_tokens_waits_the_whole_linger(clock: _Clock) -> None:
    linger = _Linger(LINGER)
    assert _after(linger, clock, 0.01, _created(_Linger.RUSH_RECORDS))
    assert linger._wait == LINGER


def test_the_freed_linger_never_exceeds_the_setting(clock: _Clock) -> None:
    linger = _Linger(0.005)
    assert _after(linger, clock, 0.001, _freed())
    assert linger._wait == 0.005


def test_no_linger_set_means_no_wait_at_all(clock: _Clock) -> None:
    linger = _Linger(0.0)
    assert not _after(linger, clock, 0.001, _freed(50))
    assert not _after(linger, clock, 0.001, _created(5000))
