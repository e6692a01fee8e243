"""Domain errors. They never import grpc; ``waiting_core.grpc_errors`` maps them to codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client may be told about."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """A request field is malformed; the message names the field."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field}: {why}")
        self.field = field


class NotFound(DomainError):
    """The thing a request names does not exist."""


class TokenNotFound(NotFound):
    """No token has this id."""

    def __init__(self, token_id: str) -> None:
        super().__init__(f"token_id: no token {token_id!r}")


class FailedPrecondition(DomainError):
    """The request is well formed but the token's state does not allow it."""


class Unauthenticated(DomainError):
    """An admin RPC came without a valid credential."""


class Unavailable(DomainError):
    """A dependency (database, broker) is unreachable for now; the client may retry."""


class StorageUnavailable(Unavailable):
    """The database could not be reached or timed out."""

    def __init__(self) -> None:
        super().__init__("the token store is unavailable; retry with back-off")


class BadEvent(DomainError):
    """A Kafka record that cannot be decoded or applied; it belongs in the dead-letter topic."""
