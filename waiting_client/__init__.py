"""Client-side helpers for backends that sit behind the waiting room.

``TokenGate`` is a grpc.aio server interceptor for a reservation service: it lets a guarded
RPC through only for a holder admitted to the schedule, by verifying the admission pass
offline (``PassVerifier`` with a ``KeySet`` of the waiting room's JWK Set, optionally
following ``Revocations``) or by asking ``ValidateToken``.
"""

from waiting_client.gate import PASS_HEADER, SCHEDULE_HEADER, TOKEN_HEADER, TokenGate
from waiting_client.passes import (
    Claims,
    GrpcJwks,
    HttpJwks,
    KeySet,
    PassRejected,
    PassVerifier,
)
from waiting_client.revocation import Revocations

__all__ = [
    "PASS_HEADER",
    "SCHEDULE_HEADER",
    "TOKEN_HEADER",
    "Claims",
    "GrpcJwks",
    "HttpJwks",
    "KeySet",
    "PassRejected",
    "PassVerifier",
    "Revocations",
    "TokenGate",
]
