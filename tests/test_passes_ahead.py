"""Passes minted ahead of a settle's locks (``activator/passes_ahead.py``): used only where
they are exactly the passes the settle would mint, and a settle after freed slots mints
them for the tokens it then admits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from sqlalchemy import select, update

from activator import admission, passes_ahead
from activator.admission import Admitter
from activator.config import ActivatorSettings
from activator.passes_ahead import NO_PASSES_AHEAD, PassesAhead, mint_ahead
from tests.helpers import System, issue, set_capacity, wait_counts
from waiting_core import passes, repository
from waiting_core.database import Database
from waiting_core.domain import TokenStatus
from waiting_core.events import Topics
from waiting_core.models import AnyToken, ScheduleRow, TokenRecord, TokenRow
from waiting_core.outbox import OutboxRelay
from waiting_core.passes import PassSettings
from waiting_core.signing_keys import Signer, SigningKeys, key_config

SECOND = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)


def _signer() -> Signer:
    key = passes.generate_key("ES256")
    return Signer(key.kid, "ES256", passes.load_private_key(key.private_pem), PassSettings())


def _token(token_id: str, activated_at: datetime) -> TokenRecord:
    return TokenRecord(
        token_id=token_id,
        user_id=f"user-of-{token_id}",
        schedule_id=7,
        status=TokenStatus.ACTIVE,
        seq=1,
        issued_at=activated_at,
        last_seen_at=activated_at,
        activated_at=activated_at,
        expires_at=activated_at + timedelta(seconds=300),
    )


def _schedule() -> ScheduleRow:
    return ScheduleRow(schedule_id=7, active_ttl_seconds=300)


def _claims_of(jws: str, signer: Signer) -> dict[str, object]:
    public = signer.key.public_key()
    settings = signer.settings
    return dict(
        jwt.decode(
            jws,
            public,
            algorithms=["ES256"],
            audience=settings.audience,
            issuer=settings.issuer,
            # the claims are compared whole; the test's moments need not be now
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    )


def test_a_pass_minted_ahead_is_used_when_the_claims_are_the_same() -> None:
    signer = _signer()
    ahead = mint_ahead(signer, [_token("a", SECOND)], {7: _schedule()}, SECOND)

    # later in the same second: the same whole-second claims
    admitted = _token("a", SECOND + timedelta(milliseconds=900))
    assert ahead.signer(signer).mint(admitted) == ahead.passes["a"][1]


@pytest.mark.parametrize(
    ("case", "token_id", "moment"),
    [
        ("the second turned", "a", SECOND + timedelta(seconds=1)),
        ("another token", "b", SECOND),
    ],
)
def test_a_pass_is_minted_anew_when_the_one_ahead_does_not_match(
    case: str, token_id: str, moment: datetime
) -> None:
    signer = _signer()
    ahead = mint_ahead(signer, [_token("a", SECOND)], {7: _schedule()}, SECOND)
    admitted = _token(token_id, moment)

    minted = ahead.signer(signer).mint(admitted)

    assert minted not in {jws for _, jws in ahead.passes.values()}, case
    assert _claims_of(minted, signer) == signer.claims(admitted)


def test_passes_minted_with_another_key_are_never_used() -> None:
    old, new = _signer(), _signer()
    ahead = mint_ahead(old, [_token("a", SECOND)], {7: _schedule()}, SECOND)

    minted = ahead.signer(new).mint(_token("a", SECOND))

    assert minted != ahead.passes["a"][1]
    assert _claims_of(minted, new)["jti"] == "a"


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """The admission module's clock, stopped early in a second: the read ahead and the
    settle fall in the same second."""
    moment = datetime.now(UTC).replace(microsecond=100_000)
    monkeypatch.setattr(admission, "utc_now", lambda: moment)
    return moment


@dataclass(frozen=True, slots=True)
class _Settled:
    """A settle after 15 freed slots in a line of 25: what it admitted, the passes stored,
    and the signer of the key."""

    admitted: Sequence[AnyToken]
    stored: dict[str, str]
    signer: Signer


async def _settle_after_freed_slots(system: System, schedule_id: int) -> _Settled:
    """5 ACTIVE and 25 PENDING; 15 slots more, without an event the system's activator
    would settle on; then a settle by an admitter of the test's own, told slots were freed."""
    await set_capacity(system, schedule_id, 5)
    for i in range(30):
        await issue(system, f"user-{i}", schedule_id)
    await wait_counts(system, schedule_id, active=5, pending=25)
    settings = system.activator_settings
    async with Database(settings.database_url) as database:
        keys = SigningKeys(database, key_config(settings))
        async with database.transaction() as session:  # the key, as a settle reads it
            signer = await keys.signer(session)
        admitter = Admitter(*_relay_and_topics(database, settings), keys, reads=database)
        async with database.transaction() as session:
            await session.execute(
                update(ScheduleRow)
                .where(ScheduleRow.schedule_id == schedule_id)
                .values(capacity=20)
            )
        (settlement,) = await admitter.settle_many([schedule_id], freed={schedule_id})
        async with database.transaction(read_only=True) as session:
            rows = (
                await session.execute(
                    select(TokenRow).where(
                        TokenRow.schedule_id == schedule_id, TokenRow.status == "ACTIVE"
                    )
                )
            ).scalars()
            stored = {row.token_id: row.admission_pass or "" for row in rows}
    return _Settled(settlement.admitted, stored, signer)


def _relay_and_topics(
    database: Database, settings: ActivatorSettings
) -> tuple[OutboxRelay, Topics]:
    topics = Topics(
        origin="activator", waiting=settings.waiting_topic, events=settings.events_topic
    )
    relay = OutboxRelay(  # never started: the system's relay publishes what it commits
        database, settings.kafka_bootstrap, topics=topics, partitions=settings.topic_partitions
    )
    return relay, topics


@pytest.mark.parametrize("second_turns", [False, True], ids=["same second", "second turns"])
async def test_a_settle_after_freed_slots_admits_with_passes_minted_ahead(
    system: System,
    schedule_id: int,
    frozen_clock: datetime,
    monkeypatch: pytest.MonkeyPatch,
    second_turns: bool,
) -> None:
    minted: list[PassesAhead] = []
    mint = passes_ahead.mint_ahead

    def recording_mint(
        signer: Signer,
        tokens: Sequence[TokenRecord],
        schedules: Mapping[int, ScheduleRow],
        now: datetime,
    ) -> PassesAhead:
        # "second turns": as if minted a second before the settle took its locks
        earlier = now - timedelta(seconds=1) if second_turns else now
        minted.append(mint(signer, tokens, schedules, earlier))
        return minted[-1]

    monkeypatch.setattr(admission, "mint_ahead", recording_mint)

    settled = await _settle_after_freed_slots(system, schedule_id)

    (ahead,) = minted
    admitted = {token.token_id for token in settled.admitted}
    assert len(admitted) == 15
    assert set(ahead.passes) == admitted  # the read ahead saw the tokens admitted
    stored = settled.stored
    used = {token_id for token_id in admitted if stored[token_id] == ahead.passes[token_id][1]}
    assert used == (set() if second_turns else admitted)
    for token in settled.admitted:
        assert _claims_of(stored[token.token_id], settled.signer) == settled.signer.claims(token)


async def test_a_failed_read_ahead_leaves_the_settle_to_sign(
    system: System, schedule_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_read(*args: object) -> list[TokenRecord]:
        raise RuntimeError("the read ahead broke")

    monkeypatch.setattr(repository, "oldest_pending", failing_read)

    settled = await _settle_after_freed_slots(system, schedule_id)

    assert len(settled.admitted) == 15
    for token in settled.admitted:
        claims = _claims_of(settled.stored[token.token_id], settled.signer)
        assert claims == settled.signer.claims(token)


async def test_a_settle_without_freed_slots_mints_nothing_ahead(
    system: System, schedule_id: int
) -> None:
    await set_capacity(system, schedule_id, 20)
    settings = system.activator_settings
    async with Database(settings.database_url) as database:
        keys = SigningKeys(database, key_config(settings))
        admitter = Admitter(*_relay_and_topics(database, settings), keys, reads=database)
        assert await admitter._mint_ahead([]) is NO_PASSES_AHEAD
        # no key read yet: nothing to mint with
        assert await admitter._mint_ahead([schedule_id]) is NO_PASSES_AHEAD
