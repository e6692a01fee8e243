"""Offline verification of admission passes: the JWK Set cache and the checks.

A pass is a compact JWS minted when a token becomes ACTIVE (``Token.admission_pass``). A
downstream service verifies it with the waiting room's public keys and no call per request:

    keys = KeySet(GrpcJwks(channel))            # or HttpJwks("http://host:9101/.well-known/jwks.json")
    verifier = PassVerifier(keys, audience="seat-service")
    claims = await verifier.verify(admission_pass, schedule_id)   # or raises PassRejected

The key set is fetched on first use (or ``start``), again when a pass names an unknown
``kid`` (at most once per ``min_refresh_seconds``), and in the background once it is
``max_age_seconds`` old. With no keys at all it fails closed (UNAVAILABLE).

Each key verifies only with the algorithm its JWK names, never the one a pass's header
asks for, so ``alg: none`` and HS256-with-the-public-key passes are refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import jwt

from waiting.v1 import token_service_pb2, token_service_pb2_grpc
from waiting_client.revocation import Revocations

log = logging.getLogger(__name__)

ALGORITHMS = frozenset({"ES256", "EdDSA", "RS256"})
REQUIRED_CLAIMS = ["iss", "aud", "sub", "jti", "sch", "iat", "nbf", "exp"]


class PassRejected(Exception):
    """The pass does not admit its bearer; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _unauthenticated(reason: str) -> PassRejected:
    return PassRejected(grpc.StatusCode.UNAUTHENTICATED, f"admission pass: {reason}")


class JwksSource(Protocol):
    """Where the JWK Set document comes from."""

    async def fetch(self) -> str:
        """The JWK Set as JSON."""


class GrpcJwks:
    """The JWK Set from ``TokenService/GetSigningKeys`` on a channel to token_api."""

    def __init__(self, channel: grpc.aio.Channel, timeout_seconds: float = 2.0) -> None:
        self._stub = token_service_pb2_grpc.TokenServiceStub(channel)
        self._timeout = timeout_seconds

    async def fetch(self) -> str:
        """The JWK Set as JSON."""
        request = token_service_pb2.GetSigningKeysRequest()
        reply = await self._stub.GetSigningKeys(request, timeout=self._timeout)
        return reply.jwks_json


class HttpJwks:
    """The JWK Set from a URL, e.g. ``http://token-api:9101/.well-known/jwks.json``."""

    def __init__(self, url: str, timeout_seconds: float = 2.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the JWK Set URL must be http:// or https://")
        self._url = url
        self._timeout = timeout_seconds

    async def fetch(self) -> str:
        """The JWK Set as JSON."""
        return await asyncio.to_thread(self._get)

    def _get(self) -> str:
        with urllib.request.urlopen(self._url, timeout=self._timeout) as reply:  # noqa: S310 - scheme checked above
            body: bytes = reply.read(1 << 20)
        return body.decode()


class KeySet:
    """A cached JWK Set: kid -> verifying key, refreshed on unknown kids and with age."""

    def __init__(
        self,
        source: JwksSource,
        *,
        min_refresh_seconds: float = 1.0,
        max_age_seconds: float = 300.0,
    ) -> None:
        self._source = source
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e18
        self._tried_at = -1e18
        self._refreshing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def kids(self) -> frozenset[str]:
        """The key ids known now."""
        return frozenset(self._keys)

    async def start(self) -> None:
        """Fetch the JWK Set once (a failure is logged; calls then fail closed and retry)."""
        await self._refresh()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key called ``kid``, fetching the set again if it is unknown and the last
        attempt is old enough; None when it is still unknown."""
        if time.monotonic() - self._fetched_at > self._max_age:
            self._refresh_soon()
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._tried_at >= self._min_refresh:
            await self._refresh()
            key = self._keys.get(kid)
        return key

    @property
    def empty(self) -> bool:
        """No usable key is known: verification fails closed."""
        return not self._keys

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        asked = time.monotonic()
        async with self._lock:
            if self._tried_at >= asked:
                return  # fetched while this call waited for the lock
            self._tried_at = time.monotonic()
            try:
                keys = parse_jwks(await self._source.fetch())
            except Exception as exc:  # noqa: BLE001 - keep the old keys; calls retry later
                log.warning("cannot refresh the JWK Set: %s: %s", type(exc).__name__, exc)
                return
            self._keys = keys
            self._fetched_at = time.monotonic()


def parse_jwks(document: str) -> dict[str, jwt.PyJWK]:
    """kid -> key of every usable signing key in a JWK Set; others are skipped."""
    keys: dict[str, jwt.PyJWK] = {}
    for entry in json.loads(document).get("keys", []):
        if not isinstance(entry, dict):
            continue
        kid, alg = entry.get("kid"), entry.get("alg")
        if not isinstance(kid, str) or alg not in ALGORITHMS or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm=alg)
        except jwt.PyJWTError as exc:
            log.warning("skipping JWK %s: %s", kid, exc)
    return keys


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified pass says."""

    user_id: str
    token_id: str
    schedule_id: int
    expires_at: int
    raw: dict[str, Any]


class PassVerifier:
    """Checks a pass: signature with a published key, exp and nbf (with ``leeway_seconds``),
    iss, aud, the schedule, and (with ``revocations``) that it was not given up early."""

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str = "waiting-room",
        audience: str = "seat-service",
        leeway_seconds: float = 5.0,
        revocations: Revocations | None = None,
    ) -> None:
        self.keys = keys
        self.revocations = revocations
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds

    async def start(self) -> None:
        """Fetch the keys, and catch up on revocations when following them."""
        await self.keys.start()
        if self.revocations is not None:
            await self.revocations.start()

    async def stop(self) -> None:
        """Stop following revocations."""
        if self.revocations is not None:
            await self.revocations.stop()

    async def verify(self, admission_pass: str, schedule_id: int) -> Claims:
        """The claims of a pass that admits its bearer to ``schedule_id``; PassRejected
        (UNAUTHENTICATED, PERMISSION_DENIED for another schedule's pass, or UNAVAILABLE
        with no keys) otherwise. Never raises anything else."""
        try:
            header = jwt.get_unverified_header(admission_pass)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _unauthenticated("malformed") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _unauthenticated("no key id")
        key = await self.keys.key(kid)
        if key is None:
            if self.keys.empty:
                raise PassRejected(grpc.StatusCode.UNAVAILABLE, "no signing keys to verify with")
            raise _unauthenticated("unknown key id")
        return self._check(admission_pass, key, schedule_id)

    def _check(self, admission_pass: str, key: jwt.PyJWK, schedule_id: int) -> Claims:
        claims = self._decode(admission_pass, key)
        sch, sub, jti, exp = claims["sch"], claims["sub"], claims["jti"], claims["exp"]
        if not (isinstance(sch, int) and not isinstance(sch, bool) and sch > 0):
            raise _unauthenticated("sch is not a schedule id")
        if not (isinstance(sub, str) and isinstance(jti, str) and jti):
            raise _unauthenticated("sub and jti must be strings")
        if sch != schedule_id:
            raise PassRejected(
                grpc.StatusCode.PERMISSION_DENIED,
                f"admission pass: for schedule {sch}, not {schedule_id}",
            )
        if self.revocations is not None and self.revocations.revoked(jti):
            raise _unauthenticated("revoked: the token left ACTIVE early")
        return Claims(sub, jti, sch, int(exp), claims)

    def _decode(self, admission_pass: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                admission_pass,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS, "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthenticated("not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise _unauthenticated("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _unauthenticated("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise _unauthenticated("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthenticated(f"missing claim {exc.claim}") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _unauthenticated("malformed") from None
