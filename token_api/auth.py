"""Bearer-token guard for the admin ScheduleService.

Admin RPCs need ``authorization: Bearer <ADMIN_TOKEN>``. With no ADMIN_TOKEN configured the
admin API is closed. The credential is compared in constant time and never logged. The
guard runs before each ScheduleService method (``waiting_core.calls.add_servicer``); a
refusal is raised as ``errors.Unauthenticated``, which ``waiting_core.grpc_errors`` maps to
the code.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from waiting_core.errors import Unauthenticated


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer":
                return credential.strip()
    return ""


class AdminCredential:
    """A ``waiting_core.calls.Guard``: lets a call through only with the configured bearer
    credential."""

    def __init__(self, admin_token: str) -> None:
        self._expected = admin_token.encode()

    def __call__(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        if not self._expected:
            raise Unauthenticated("authorization: the admin API is disabled (set ADMIN_TOKEN)")
        given = _bearer(metadata).encode()
        if not given:
            raise Unauthenticated("authorization: a bearer credential is required")
        if not hmac.compare_digest(given, self._expected):
            raise Unauthenticated("authorization: the bearer credential is not valid")
