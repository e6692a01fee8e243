"""The admission-pass signing keys, kept where every service finds them.

The database holds every key's public half and its schedule (``signing_keys``). The private
half is in the same row, or, with ``SIGNING_KEY_DIR`` set, in ``<dir>/<kid>.pem`` (mode 600)
on a volume every service mounts. The first key is made on first use; later ones by
``rotate`` (the admin ``RotateSigningKey``).

Activators sign with :meth:`SigningKeys.signer`; both services publish :meth:`jwks`. Both
read the keys at most once per KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from waiting_core import passes, repository
from waiting_core.clock import utc_now
from waiting_core.database import Database
from waiting_core.models import AnyToken, SigningKeyRow
from waiting_core.passes import KeyRecord, PassSettings, PrivateKey
from waiting_core.settings import CommonSettings

KEY_CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """Where private keys live and how rotations are published."""

    passes: PassSettings = field(default_factory=PassSettings)
    key_dir: str = ""
    prepublish_seconds: float = 60.0
    jwks_max_age_seconds: int = 60


def key_config(settings: CommonSettings) -> KeyConfig:
    """The key settings of a service's settings."""
    return KeyConfig(
        PassSettings(settings.pass_algorithm, settings.pass_issuer, settings.pass_audience),
        key_dir=settings.signing_key_dir,
        prepublish_seconds=settings.signing_key_prepublish_seconds,
        jwks_max_age_seconds=settings.jwks_max_age_seconds,
    )


@dataclass(frozen=True, slots=True)
class Signer:
    """Mints the passes of newly admitted tokens with one key."""

    kid: str
    algorithm: str
    key: PrivateKey
    settings: PassSettings
    published_until: datetime | None = None  # the key's passes_until as read

    def mint(self, token: AnyToken) -> str:
        """The pass of an ACTIVE token."""
        return self.sign(self.claims(token))

    def claims(self, token: AnyToken) -> dict[str, Any]:
        """The claims of an ACTIVE token's pass."""
        if token.activated_at is None or token.expires_at is None:
            raise ValueError(f"token {token.token_id} is not ACTIVE")
        return passes.pass_claims(
            self.settings,
            token.token_id,
            token.user_id,
            token.schedule_id,
            token.activated_at,
            token.expires_at,
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """The pass (a compact JWS) of these claims, with this key."""
        return passes.mint(claims, self.key, self.kid, self.algorithm)


class SigningKeys:
    """Reads, makes and rotates the signing keys; caches them for KEY_CACHE_SECONDS."""

    def __init__(self, database: Database, config: KeyConfig) -> None:
        self._database = database
        self.config = config
        self._rows: list[SigningKeyRow] = []
        self._read_at = -1e9
        self._private: dict[str, PrivateKey] = {}
        self._jwks: tuple[float, str] | None = None
        self._lock = asyncio.Lock()

    async def signer(self, session: AsyncSession) -> Signer:
        """The signer of the current key, read within the caller's transaction (making the
        first key ever if there is none)."""
        rows = await self._cached_rows(session)
        current = passes.signing_key([_record(r) for r in rows], utc_now())
        if current is None:
            rows = [*rows, await self._add_key(session, signs_from=utc_now())]
            self._rows, self._read_at = rows, time.monotonic()
            current = _record(rows[-1])
        return self._signer_of(rows, current)

    def cached_signer(self) -> Signer | None:
        """The signer of the current key as last read by ``signer``, with no database access
        (None before the first read): to mint passes ahead of a transaction. Its key may be
        a second stale; the transaction's own ``signer`` has the last word."""
        if not self._rows:
            return None
        current = passes.signing_key([_record(r) for r in self._rows], utc_now())
        return None if current is None else self._signer_of(self._rows, current)

    async def jwks(self) -> str:
        """The JWK Set document: public keys only, as ``passes.published_keys`` picks them."""
        cached = self._jwks
        if cached is not None and time.monotonic() - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        async with self._lock:
            async with self._database.transaction(read_only=True) as session:
                rows = await repository.signing_keys(session)
            if not rows:
                async with self._database.transaction() as session:
                    rows = await repository.signing_keys(session)
                    if not rows:
                        rows = [await self._add_key(session, signs_from=utc_now())]
            document = passes.jwks_json(
                passes.published_keys([_record(r) for r in rows], utc_now())
            )
            self._jwks = (time.monotonic(), document)
            return document

    async def rotate(self) -> KeyRecord:
        """Make a new key: published now, signing after the pre-publication time. Keys that
        left the JWK Set for good are deleted."""
        now = utc_now()
        signs_from = now + timedelta(seconds=self.config.prepublish_seconds)
        async with self._database.transaction() as session:
            rows = await repository.signing_keys(session)
            records = [_record(r) for r in rows]
            shown = {r.kid for r in passes.published_keys(records, now)}
            await repository.drop_signing_keys(
                session, [r.kid for r in records if r.kid not in shown and r.signs_from <= now]
            )
            row = await self._add_key(session, signs_from=signs_from)
        self._jwks = None
        self._read_at = -1e9
        return _record(row)

    async def _cached_rows(self, session: AsyncSession) -> list[SigningKeyRow]:
        if time.monotonic() - self._read_at >= KEY_CACHE_SECONDS:
            self._rows = await repository.signing_keys(session)
            self._read_at = time.monotonic()
        return self._rows

    async def _add_key(self, session: AsyncSession, signs_from: datetime) -> SigningKeyRow:
        key = passes.generate_key(self.config.passes.algorithm)
        in_directory = bool(self.config.key_dir)
        if in_directory:
            _write_private_key(Path(self.config.key_dir), key.kid, key.private_pem)
        row = SigningKeyRow(
            kid=key.kid,
            algorithm=key.algorithm,
            public_jwk=json.dumps(key.public_jwk, separators=(",", ":")),
            private_pem=None if in_directory else key.private_pem,
            created_at=utc_now(),
            signs_from=signs_from,
            passes_until=None,
        )
        await repository.add_signing_key(session, row)
        return row

    def _signer_of(self, rows: list[SigningKeyRow], current: KeyRecord) -> Signer:
        row = next(r for r in rows if r.kid == current.kid)
        return Signer(
            current.kid,
            current.algorithm,
            self._private_key(row),
            self.config.passes,
            row.passes_until,
        )

    def _private_key(self, row: SigningKeyRow) -> PrivateKey:
        key = self._private.get(row.kid)
        if key is None:
            pem = row.private_pem
            if pem is None:
                pem = (Path(self.config.key_dir) / f"{row.kid}.pem").read_bytes()
            key = self._private[row.kid] = passes.load_private_key(pem)
        return key


def _record(row: SigningKeyRow) -> KeyRecord:
    return KeyRecord(
        row.kid, row.algorithm, json.loads(row.public_jwk), row.signs_from, row.passes_until
    )


def _write_private_key(directory: Path, kid: str, pem: bytes) -> None:
    """Write ``<kid>.pem`` readable by its owner only, atomically."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = directory / f".{kid}.pem.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    partial.replace(directory / f"{kid}.pem")
