"""Admission passes minted before a settle takes its locks.

A settle holds its schedules' locks (SQLite's one write lock, or the schedule rows on
PostgreSQL) from its first read to its commit, and token_api's release groups wait for the
same locks. Signing a pass costs 25-60 µs, and a rush of freed slots admits dozens of
tokens a settle: signing was a third of the time a settle held the locks. So the settle
that follows freed slots first reads, unlocked, the tokens it expects to admit, and mints
their passes with the activation moment it expects.

Under the locks the settle decides as before. A pass minted ahead is used only where it is
exactly the pass the settle would mint: same token, same key, same claims. The claims are
in whole seconds (``passes.pass_claims``), so a settle in the same second as the minting
uses them all; any other admitted token (the line changed, the second turned, the key
rotated) has its pass minted under the locks, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from waiting_core import repository
from waiting_core.models import AnyToken, ScheduleRow, TokenRecord
from waiting_core.signing_keys import Signer


@dataclass(frozen=True, slots=True)
class PassesAhead:
    """Passes minted with the key ``kid``: token id -> (claims, pass)."""

    kid: str = ""
    passes: Mapping[str, tuple[dict[str, Any], str]] = field(default_factory=dict)

    def signer(self, signer: Signer) -> AheadSigner:
        """``signer``, giving out these passes where they are the ones it would mint."""
        return AheadSigner(signer, self)


NO_PASSES_AHEAD = PassesAhead()


class AheadSigner:
    """A ``repository.PassSigner``: a pass minted ahead when it matches, else a new one."""

    def __init__(self, signer: Signer, ahead: PassesAhead) -> None:
        self._signer = signer
        self._ahead = ahead.passes if ahead.kid == signer.kid else {}

    @property
    def kid(self) -> str:
        return self._signer.kid

    @property
    def published_until(self) -> datetime | None:
        return self._signer.published_until

    def mint(self, token: AnyToken) -> str:
        claims = self._signer.claims(token)
        minted = self._ahead.get(token.token_id)
        if minted is not None and minted[0] == claims:
            return minted[1]
        return self._signer.sign(claims)


def mint_ahead(
    signer: Signer,
    tokens: Sequence[TokenRecord],
    schedules: Mapping[int, ScheduleRow],
    now: datetime,
) -> PassesAhead:
    """The passes of ``tokens`` (read unlocked) if their schedules admit them ``now``."""
    minted: dict[str, tuple[dict[str, Any], str]] = {}
    for token in tokens:
        repository.activate(token, schedules[token.schedule_id], now)
        claims = signer.claims(token)
        minted[token.token_id] = (claims, signer.sign(claims))
    return PassesAhead(signer.kid, minted)
