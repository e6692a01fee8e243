"""Client-side helpers for backends that sit behind the waiting room.

``TokenGate`` is a grpc.aio server interceptor for a reservation service: it lets a guarded
RPC through only when the caller's waiting token is ACTIVE for the schedule.
"""

from waiting_client.gate import SCHEDULE_HEADER, TOKEN_HEADER, TokenGate

__all__ = ["SCHEDULE_HEADER", "TOKEN_HEADER", "TokenGate"]
