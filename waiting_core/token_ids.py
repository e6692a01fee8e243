"""Token ids derived from (schedule, user, generation) with a server-side secret.

Two IssueToken calls for the same user and schedule, on any token_api process, derive the
same id, so the activator that writes the log keeps exactly one token (I5) without a lock
at issue. The id also carries the schedule and a tag, so any process holding the secret can
recognise one of its own ids before the activator has written it.

Layout, 32 bytes as 43 URL-safe base64 characters::

    schedule_id (8, big-endian) | digest (18) | tag (6)

- digest = HMAC-SHA256(secret, "token" | schedule | generation | user)[:18]: 144 bits
  nobody can compute without the secret;
- tag = HMAC-SHA256(secret, "tag" | schedule | digest)[:6]: marks the id as ours.

``generation`` is how many tokens the user already had for the schedule (all of them
ended, or there would be a live one to return): a new token after the last one ended.
Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

SECRET_BYTES = 32
_SCHEDULE_BYTES = 8
_DIGEST_BYTES = 18
_TAG_BYTES = 6
ID_BYTES = _SCHEDULE_BYTES + _DIGEST_BYTES + _TAG_BYTES
ID_LENGTH = 43  # len(base64url(32 bytes)) without padding
LEGACY_ID_LENGTH = 32  # random ids issued before ids were derived
ID_PATTERN = re.compile(rf"[A-Za-z0-9_-]{{{LEGACY_ID_LENGTH}}}|[A-Za-z0-9_-]{{{ID_LENGTH}}}")


def new_secret() -> bytes:
    """A fresh secret for deriving ids."""
    return secrets.token_bytes(SECRET_BYTES)


def random_id() -> str:
    """An id in the same format with no derivation behind it, for bulk-loaded tokens."""
    return base64.urlsafe_b64encode(secrets.token_bytes(ID_BYTES)).rstrip(b"=").decode()


class TokenIds:
    """Derives token ids and recognises them, with one secret shared by every service."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the token id secret must have at least 16 bytes")
        self._secret = secret

    def derive(self, schedule_id: int, user_id: str, generation: int) -> str:
        """The id of the user's ``generation``-th token for the schedule (0 for the first)."""
        schedule = schedule_id.to_bytes(_SCHEDULE_BYTES, "big")
        message = b"token|" + schedule + generation.to_bytes(8, "big") + user_id.encode()
        digest = self._mac(message)[:_DIGEST_BYTES]
        raw = schedule + digest + self._tag(schedule + digest)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def schedule_of(self, token_id: str) -> int | None:
        """The schedule of an id this service derived; None for any other string."""
        if len(token_id) != ID_LENGTH:
            return None
        try:
            raw = base64.urlsafe_b64decode(token_id + "=")
        except (binascii.Error, ValueError):
            return None
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if len(raw) != ID_BYTES or not hmac.compare_digest(tag, self._tag(body)):
            return None
        return int.from_bytes(body[:_SCHEDULE_BYTES], "big")

    def _tag(self, body: bytes) -> bytes:
        return self._mac(b"tag|" + body)[:_TAG_BYTES]

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._secret, message, hashlib.sha256).digest()
