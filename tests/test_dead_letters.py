"""A poison record goes to waiting-token.DLT with its coordinates; the partition moves on."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from tests.helpers import System, issue, read_topic, wait_counts
from waiting_core.events import EVENT_TYPE_HEADER, Topics, schedule_key

POISON = [
    (b"\xff\xff\xff not protobuf", b"waiting.v1.CreateTokenEvent"),
    (b"", b"waiting.v1.SomethingElse"),
    (b"", b"waiting.v1.CreateTokenEvent"),  # decodes, but schedule_id 0
]


async def test_poison_records_are_dead_lettered_and_the_line_keeps_moving(
    system: System, schedule_id: int
) -> None:
    settings = system.token_api_settings
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for value, event_type in POISON:
            await producer.send_and_wait(
                settings.waiting_topic,
                value=value,
                key=schedule_key(schedule_id),
                headers=[(EVENT_TYPE_HEADER, event_type)],
            )
    finally:
        await producer.stop()

    await issue(system, "after-the-poison", schedule_id)  # same key, same partition

    await wait_counts(system, schedule_id, active=1, pending=0)
    letters = await _read_dead_letters(
        Topics(origin="test", waiting=settings.waiting_topic).dead_letter,
        settings.kafka_bootstrap,
        len(POISON),
    )
    mine = [h for h in letters if h["dlt-original-topic"] == settings.waiting_topic.encode()]
    assert len(mine) == len(POISON)
    assert all(int(h["dlt-original-offset"]) >= 0 for h in mine)
    assert all(b"BadEvent" in h["dlt-error"] for h in mine)
    assert len({h["dlt-original-partition"] for h in mine}) == 1


async def _read_dead_letters(topic: str, bootstrap: str, wanted: int) -> list[dict[str, bytes]]:
    return await read_topic(
        topic, bootstrap, lambda r: dict(r.headers), lambda found: len(found) >= wanted, timeout=20
    )
