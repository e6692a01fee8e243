"""SQLAlchemy models of the token store. The schema itself is made by the Alembic migrations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import TextClause

from waiting_core.domain import DEPARTURE_STATUSES, LIVE_STATUSES, TokenStatus

# SQLite only autoincrements an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


StatusType = Enum(
    TokenStatus,
    name="token_status",
    native_enum=False,
    create_constraint=False,
    length=10,
    values_callable=lambda members: [m.value for m in members],
)


def _sql_list(statuses: tuple[TokenStatus, ...]) -> str:
    return "(" + ", ".join(f"'{status.value}'" for status in statuses) + ")"


def live_predicate(qualifier: str = "") -> TextClause:
    """SQL: the token is live (``TokenStatus.is_live``); ``qualifier`` is e.g. "tokens."."""
    return text(f"{qualifier}status IN {_sql_list(LIVE_STATUSES)}")


def departed_predicate(qualifier: str = "") -> TextClause:
    """SQL: the token left the line without being admitted (cancelled or abandoned)."""
    return text(
        f"{qualifier}status IN {_sql_list(DEPARTURE_STATUSES)} AND {qualifier}activated_at IS NULL"
    )


# Predicates of the partial indexes, written as SQL literals: the queries in repository.py
# use the same functions, so that both PostgreSQL and SQLite match them to the indexes.
_LIVE = live_predicate()
_PENDING = text("status = 'PENDING'")
_ACTIVE = text("status = 'ACTIVE'")
_DEPARTED = departed_predicate()
_DUE = text("next_due_at IS NOT NULL")
_DRAWN = text("status = 'PENDING' AND draw_key IS NOT NULL")


class Base(DeclarativeBase):
    """Declarative base of the token store."""


class ScheduleRow(Base):
    """Settings and live counters of one schedule; its row lock serialises admission."""

    __tablename__ = "schedules"

    schedule_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    capacity: Mapped[int] = mapped_column(Integer)
    active_ttl_seconds: Mapped[int] = mapped_column(Integer)
    pending_ttl_seconds: Mapped[int] = mapped_column(Integer)
    admit_rate_per_second: Mapped[int] = mapped_column(Integer)
    # Sequence number of the newest token issued for the schedule.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Every token with seq <= head_seq has left PENDING (admission is FIFO).
    head_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    active_count: Mapped[int] = mapped_column(Integer, default=0)
    pending_count: Mapped[int] = mapped_column(BigInteger, default=0)
    admitted_total: Mapped[int] = mapped_column(BigInteger, default=0)
    # Token bucket of admit_rate_per_second: admissions allowed as of rate_checked_at.
    rate_allowance: Mapped[float] = mapped_column(Float, default=0.0)
    rate_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # Moving-window admission rate (per second) as of admit_rate_at; see domain.updated_rate.
    admit_rate_estimate: Mapped[float] = mapped_column(Float, default=0.0)
    admit_rate_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The first admission: the estimate is corrected for a window not yet full.
    admit_rate_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # When pending_ttl_seconds last went from 0 to positive. Reads record "seen" only while
    # abandonment is on, so nobody is abandoned before a whole TTL has passed since then.
    abandonment_since: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # When the schedule next needs settling without an event: its earliest ACTIVE expiry, its
    # earliest abandonment, or the rate bucket's next admission (domain.next_due). None: never.
    next_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The pre-queue (waiting_core.prequeue): when the sale opens (None: open), the order of
    # its cohort, the secret seed of the draw (revealed after the draw), when the first
    # admissions by draw key were made, and when the line was renumbered (None: not yet).
    opens_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    prequeue_order: Mapped[str] = mapped_column(String(8), default="SHUFFLED")
    prequeue_seed: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    draw_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    drawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        Index(
            "ix_schedules_next_due",
            "next_due_at",
            sqlite_where=_DUE,
            postgresql_where=_DUE,
        ),
    )


class TokenRow(Base):
    """One waiting token."""

    __tablename__ = "tokens"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    schedule_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[TokenStatus] = mapped_column(StatusType)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # In a shuffled pre-queue's cohort: HMAC-SHA256(seed, token_id), its place in the draw.
    draw_key: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    # The signed admission pass (a compact JWS), minted once when the token became ACTIVE.
    admission_pass: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        UniqueConstraint("schedule_id", "seq", name="uq_tokens_schedule_seq"),
        # I5: one live token per user and schedule.
        Index(
            "uq_tokens_live_user",
            "schedule_id",
            "user_id",
            unique=True,
            sqlite_where=_LIVE,
            postgresql_where=_LIVE,
        ),
        # Issue: a user's tokens of a schedule, live or ended (their count derives the id).
        Index("ix_tokens_user", "schedule_id", "user_id"),
        # Admission: the oldest PENDING tokens of a schedule.
        Index(
            "ix_tokens_pending",
            "schedule_id",
            "seq",
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        ),
        # Positions: tokens that left the line without being admitted.
        Index(
            "ix_tokens_departed",
            "schedule_id",
            "seq",
            sqlite_where=_DEPARTED,
            postgresql_where=_DEPARTED,
        ),
        # Abandonment sweeps: PENDING tokens nobody asked about lately.
        Index(
            "ix_tokens_pending_seen",
            "schedule_id",
            "last_seen_at",
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        ),
        # The opening of a shuffled sale: the cohort by draw key.
        Index(
            "ix_tokens_draw",
            "schedule_id",
            "draw_key",
            sqlite_where=_DRAWN,
            postgresql_where=_DRAWN,
        ),
        # A schedule's earliest expiry (its next due moment).
        Index(
            "ix_tokens_active_expiry",
            "schedule_id",
            "expires_at",
            sqlite_where=_ACTIVE,
            postgresql_where=_ACTIVE,
        ),
    )


@dataclass(slots=True)
class TokenRecord:
    """A token read or written by a Core statement, outside the ORM: the tokens a settle
    admits and a status read returns. It has TokenRow's columns and none of its
    instrumentation, which costs about 50 µs per object (a settle admitting 1,000 tokens
    spent a fifth of its time building them)."""

    token_id: str
    user_id: str
    schedule_id: int
    seq: int
    status: TokenStatus
    issued_at: datetime
    last_seen_at: datetime
    activated_at: datetime | None = None
    expires_at: datetime | None = None
    ended_at: datetime | None = None
    draw_key: bytes | None = None
    admission_pass: str | None = None


# A token as the code that only reads it takes it: mapped (in a session) or not.
AnyToken: TypeAlias = TokenRow | TokenRecord


class OutboxRow(Base):
    """An event written with the change it announces, published to Kafka by the relay."""

    __tablename__ = "outbox"
    # Ids are never reused: relays delete published rows by id.
    __table_args__ = (Index("ix_outbox_origin", "origin", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    origin: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(String(249))
    key: Mapped[bytes] = mapped_column(LargeBinary)
    event_type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(slots=True)
class OutboxEvent:
    """An outbox row outside the ORM: what writers insert (one executemany) and the relay
    sends. ``id`` is set once the row is in the table."""

    origin: str
    topic: str
    key: bytes
    event_type: str
    payload: bytes
    created_at: datetime
    id: int | None = None


class ServiceSecretRow(Base):
    """A secret every service shares through the database, made on first use."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class SigningKeyRow(Base):
    """A key that signs admission passes (see waiting_core.passes for its life)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[str] = mapped_column(Text)
    # PKCS#8 PEM; None when the key lives in SIGNING_KEY_DIR instead.
    private_pem: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    signs_from: Mapped[datetime] = mapped_column(UTCDateTime)
    # The latest exp of the passes it signed, raised in the transaction that mints them.
    passes_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
