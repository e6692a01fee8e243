"""Typed, frozen settings read once from the environment.

A settings class is a frozen dataclass whose fields are declared with :func:`setting`.
:func:`load` reads and checks every variable, naming the variable in any error, and
:func:`describe` renders the ``--help`` text from the same declarations.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.run/waiting-room.sqlite3"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the environment variable."""


def setting(
    env: str,
    default: Any,
    help: str,
    check: Callable[[Any], str | None] | None = None,
    *,
    secret: bool = False,
) -> Any:
    """Declare a settings field read from ``env``; ``check`` returns an error text or None.

    A ``secret`` setting is never echoed: not in errors, not in ``--help``, not in repr.
    """
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={"env": env, "help": help, "check": check, "secret": secret},
    )


def positive(value: Any) -> str | None:
    """A check: the number must be above zero."""
    return None if value > 0 else "must be greater than 0"


def non_negative(value: Any) -> str | None:
    """A check: the number must be zero or more."""
    return None if value >= 0 else "must be 0 or greater"


def port(value: Any) -> str | None:
    """A check: a TCP port, where 0 asks the OS for a free one."""
    return None if 0 <= value <= 65535 else "must be a port number between 0 and 65535"


def database_url(value: Any) -> str | None:
    """A check: an async SQLAlchemy URL of a supported driver."""
    if value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return None
    return "must start with sqlite+aiosqlite:// or postgresql+asyncpg://"


def log_level(value: Any) -> str | None:
    """A check: a standard logging level name."""
    ok = value.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    return None if ok else "must be DEBUG, INFO, WARNING, ERROR or CRITICAL"


def log_format(value: Any) -> str | None:
    """A check: text or json."""
    return None if value in ("text", "json") else "must be text or json"


def event_loop(value: Any) -> str | None:
    """A check: an event loop this service can run on."""
    return None if value in ("uvloop", "asyncio") else "must be uvloop or asyncio"


def pass_algorithm(value: Any) -> str | None:
    """A check: a JWS algorithm admission passes can be signed with."""
    return None if value in ("ES256", "EdDSA", "RS256") else "must be ES256, EdDSA or RS256"


def _parse(raw: str, kind: Any) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw


def load(cls: type[T], environ: Mapping[str, str]) -> T:
    """Build ``cls`` from ``environ``; raise ConfigError naming the first bad variable."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = field.metadata["env"]
        raw = environ.get(env)
        value = (
            field.default if raw is None or raw == "" else _parse_named(env, raw, hints[field.name])
        )
        check = field.metadata["check"]
        problem = check(value) if check is not None else None
        if problem:
            shown = "<secret>" if field.metadata["secret"] else repr(value)
            raise ConfigError(f"{env}={shown}: {problem}")
        values[field.name] = value
    return cls(**values)


def _parse_named(env: str, raw: str, kind: Any) -> Any:
    try:
        return _parse(raw, kind)
    except ValueError as exc:
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{env}={raw!r}: expected {name} ({exc})") from exc


def describe(cls: type[Any]) -> str:
    """One line per environment variable: name, default and meaning."""
    lines = []
    for field in dataclasses.fields(cls):
        hidden = field.metadata["secret"] and field.default
        default = "<secret>" if hidden else field.default
        lines.append(
            f"  {field.metadata['env']:<34} {field.metadata['help']} (default: {default!r})"
        )
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True, slots=True)
class CommonSettings:
    """Settings both services read; each service's settings class extends this one."""

    database_url: str = setting(
        "DATABASE_URL",
        DEFAULT_DATABASE_URL,
        "SQLAlchemy async URL; unset means the embedded SQLite file",
        database_url,
    )
    database_pool_size: int = setting(
        "DATABASE_POOL_SIZE", 10, "connections kept per process (PostgreSQL)", positive
    )
    kafka_bootstrap: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "Kafka bootstrap servers, comma separated"
    )
    waiting_topic: str = setting(
        "WAITING_TOPIC", "waiting-token", "topic of admission events (dead letters: <topic>.DLT)"
    )
    events_topic: str = setting(
        "TOKEN_EVENTS_TOPIC", "token-events", "topic of token state changes for other backends"
    )
    topic_partitions: int = setting(
        "TOPIC_PARTITIONS", 6, "partitions of the topics when this service creates them", positive
    )
    topic_replication_factor: int = setting(
        "TOPIC_REPLICATION_FACTOR",
        1,
        "copies of each partition when this service creates the topics (3 on a cluster)",
        positive,
    )
    shutdown_grace_seconds: float = setting(
        "SHUTDOWN_GRACE_SECONDS",
        5.0,
        "how long in-flight RPCs may finish on SIGTERM",
        non_negative,
    )
    event_loop: str = setting(
        "EVENT_LOOP",
        "uvloop",
        "uvloop (libuv, less CPU per call) or asyncio (the standard library's loop)",
        event_loop,
    )
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", log_level)
    log_format: str = setting(
        "LOG_FORMAT", "text", "text, or json for one JSON object a line", log_format
    )
    pass_algorithm: str = setting(
        "PASS_ALGORITHM",
        "ES256",
        "JWS algorithm of new admission-pass signing keys: ES256, EdDSA or RS256",
        pass_algorithm,
    )
    pass_issuer: str = setting("PASS_ISSUER", "waiting-room", "the iss claim of admission passes")
    pass_audience: str = setting(
        "PASS_AUDIENCE", "seat-service", "the aud claim of admission passes"
    )
    signing_key_dir: str = setting(
        "SIGNING_KEY_DIR",
        "",
        "directory every service mounts that holds the private signing keys (<kid>.pem); "
        "empty keeps them in the database",
    )
    signing_key_prepublish_seconds: float = setting(
        "SIGNING_KEY_PREPUBLISH_SECONDS",
        60.0,
        "how long a rotated-in key is in the JWK Set before it signs (at least JWKS_MAX_AGE)",
        non_negative,
    )
    jwks_max_age_seconds: int = setting(
        "JWKS_MAX_AGE_SECONDS",
        60,
        "Cache-Control max-age of /.well-known/jwks.json",
        non_negative,
    )
