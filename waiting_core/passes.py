"""Admission passes: the JWS an ACTIVE token carries, and the keys that sign and verify it.

No I/O here. Keys are made, minted with and chosen by these functions; ``signing_keys``
keeps them in the store, and ``waiting_client.passes`` verifies the passes.

Key life: a key is published in the JWK Set from the moment it is made, signs from
``signs_from`` (later than that for a rotation, so that caches of the JWK Set learn it
first), is retired when a newer key starts signing, and leaves the JWK Set once every pass
it signed has expired (``passes_until``) and a grace for activators' key caches is over.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGORITHMS = ("ES256", "EdDSA", "RS256")

# How long a retired key stays published although it signed nothing still valid: covers an
# activator that cached it as current (SigningKeys refreshes every KEY_CACHE_SECONDS).
RETIRED_KEY_GRACE = timedelta(seconds=10)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class PassSettings:
    """What every pass says about its issuer and audience, and how new keys are made."""

    algorithm: str = "ES256"
    issuer: str = "waiting-room"
    audience: str = "seat-service"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made key pair: the private half as PKCS#8 PEM, the public half as a JWK."""

    kid: str
    algorithm: str
    private_pem: bytes = field(repr=False)
    public_jwk: dict[str, Any]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store knows of a key, without its private half."""

    kid: str
    algorithm: str
    public_jwk: dict[str, Any]
    signs_from: datetime
    passes_until: datetime | None


def generate_key(algorithm: str) -> NewKey:
    """A new key pair for ``algorithm``; its kid is the RFC 7638 thumbprint of the JWK."""
    private: PrivateKey
    if algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(f"unsupported pass algorithm {algorithm!r}")
    kid = thumbprint(jwk)
    public = {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return NewKey(kid, algorithm, pem, public)


_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_private_key(pem: bytes) -> PrivateKey:
    """The private key of a PKCS#8 PEM made by ``generate_key``."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise ValueError("not a signing key of a supported type")
    return key


def pass_claims(
    settings: PassSettings,
    token_id: str,
    user_id: str,
    schedule_id: int,
    activated_at: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    """The claims of a token's pass. Whole seconds: iat and nbf round down, so the pass is
    good at once, and exp rounds down, so it never outlives the token."""
    issued = int(activated_at.timestamp())
    return {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": user_id,
        "jti": token_id,
        "sch": schedule_id,
        "iat": issued,
        "nbf": issued,
        "exp": int(expires_at.timestamp()),
    }


def mint(claims: dict[str, Any], key: PrivateKey, kid: str, algorithm: str) -> str:
    """The compact JWS of ``claims``, with ``kid`` in its header: the bytes ``jwt.encode``
    makes, with PyJWT's signing, but the header encoded once per key and none of
    ``jwt.encode``'s per-call checks (a third of its cost; an admission mints up to a
    thousand passes in one transaction)."""
    payload = _base64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = _header_segment(kid, algorithm) + b"." + payload
    return (signing_input + b"." + _base64url(_sign(signing_input, key, algorithm))).decode()


def _sign(signing_input: bytes, key: PrivateKey, algorithm: str) -> bytes:
    if algorithm == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey):
        # PyJWT's ECAlgorithm.sign without its per-call work: the DER signature becomes
        # the JWS's fixed-size r || s (RFC 7518, 3.4).
        r, s = decode_dss_signature(key.sign(signing_input, _ECDSA_SHA256))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return _SIGNERS[algorithm].sign(signing_input, key)


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


_SIGNERS = {
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "EdDSA": OKPAlgorithm(),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
}


@functools.lru_cache(maxsize=64)
def _header_segment(kid: str, algorithm: str) -> bytes:
    header = {"alg": algorithm, "kid": kid, "typ": "JWT"}
    return _base64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def _base64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def signing_key(records: Sequence[KeyRecord], now: datetime) -> KeyRecord | None:
    """The key that signs at ``now``: the newest whose ``signs_from`` has come."""
    started = [r for r in records if r.signs_from <= now]
    return max(started, key=lambda r: (r.signs_from, r.kid), default=None)


def published_keys(records: Sequence[KeyRecord], now: datetime) -> list[KeyRecord]:
    """The keys the JWK Set lists at ``now``: those not yet signing, the signing one, and
    each retired one until its passes have expired and its grace is over."""
    ordered = sorted(records, key=lambda r: (r.signs_from, r.kid))
    current = signing_key(ordered, now)
    shown = []
    for index, record in enumerate(ordered):
        if record.signs_from > now or record is current:
            shown.append(record)
            continue
        retired_at = ordered[index + 1].signs_from
        until = max(retired_at + RETIRED_KEY_GRACE, record.passes_until or retired_at)
        if now < until:
            shown.append(record)
    return shown


def jwks_json(records: Sequence[KeyRecord]) -> str:
    """The JWK Set (RFC 7517) of ``records``: public keys only."""
    return json.dumps({"keys": [record.public_jwk for record in records]}, separators=(",", ":"))
