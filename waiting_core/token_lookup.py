"""The hottest read of both services: one token, its schedule and its position.

``GetTokenStatus``, ``GetToken`` and ``ValidateToken`` each make exactly this one indexed
statement. It runs outside the ORM (``raw_reads``): the statement is compiled once for the
store's dialect, and each row is turned into ``TokenRow``/``ScheduleRow`` objects with the
columns' own result conversions (timestamps, enums). Those objects belong to no session:
they are a snapshot to read from, never to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import KeyedColumnElement

from waiting_core import domain
from waiting_core.domain import TokenStatus
from waiting_core.errors import TokenNotFound
from waiting_core.models import ScheduleRow, TokenRecord, TokenRow, departed_predicate
from waiting_core.raw_reads import RawReads, Row, column_converters, converted

_TOKEN_COLUMNS: list[KeyedColumnElement[Any]] = list(TokenRow.__table__.columns)
_SCHEDULE_COLUMNS: list[KeyedColumnElement[Any]] = list(ScheduleRow.__table__.columns)


@dataclass(frozen=True, slots=True)
class TokenInLine:
    """A token with its schedule's row (None if never configured) and its position."""

    token: TokenRecord
    schedule: ScheduleRow | None
    position: int


def _statement() -> Any:
    """Every column of the token and of its schedule, and how many tokens left the line
    unadmitted between the head and it (an index range on ``ix_tokens_departed``)."""
    departed = aliased(TokenRow, name="departed")
    head = func.coalesce(ScheduleRow.head_seq, 0)
    departed_count = (
        select(func.count())
        .select_from(departed)
        .where(
            departed.schedule_id == TokenRow.schedule_id,
            departed.seq > head,
            departed.seq < TokenRow.seq,
            departed_predicate("departed."),
        )
        .scalar_subquery()
    )
    return (
        select(*_TOKEN_COLUMNS, *_SCHEDULE_COLUMNS, departed_count)
        .select_from(TokenRow)
        .outerjoin(ScheduleRow, ScheduleRow.schedule_id == TokenRow.schedule_id)
        .where(TokenRow.token_id == bindparam("token_id"))
    )


class TokenLookup:
    """``read(token_id)``: the token in line, or ``TokenNotFound``."""

    def __init__(self, reads: RawReads) -> None:
        self._reads = reads
        dialect = reads.dialect
        compiled = _statement().compile(dialect=dialect)
        self._sql = str(compiled)
        self._order = list(compiled.positiontup or [])
        self._defaults = compiled.construct_params({"token_id": ""})
        self._token_columns = column_converters(_TOKEN_COLUMNS, dialect)
        self._schedule_columns = column_converters(_SCHEDULE_COLUMNS, dialect)

    async def read(self, token_id: str) -> TokenInLine:
        """The token, its schedule and its position; ``TokenNotFound`` if not in the store."""
        params = {**self._defaults, "token_id": token_id}
        rows = await self._reads.fetch(self._sql, [params[name] for name in self._order])
        if not rows:
            raise TokenNotFound(token_id)
        return self._in_line(rows[0])

    def _in_line(self, row: Row) -> TokenInLine:
        split = len(self._token_columns)
        token = TokenRecord(**converted(self._token_columns, row[:split]))
        schedule_values = row[split : split + len(self._schedule_columns)]
        schedule = (
            ScheduleRow(**converted(self._schedule_columns, schedule_values))
            if schedule_values[0] is not None
            else None
        )
        position = 0
        if token.status == TokenStatus.PENDING:
            head_seq = schedule.head_seq if schedule is not None else 0
            position = domain.pending_position(token.seq, head_seq, row[-1])
        return TokenInLine(token, schedule, position)
