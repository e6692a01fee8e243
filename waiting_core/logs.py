"""Logging set-up: text or JSON lines, each carrying the request id of the RPC it belongs to.

The request id comes from the caller's ``x-request-id`` metadata, or is made up; handlers
add ``token_id`` and ``schedule_id`` through ``extra=``. Credentials are never logged:
nothing here reads other metadata, and settings marked secret are not printed.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_FIELDS = ("request_id", "token_id", "schedule_id")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value not in (None, "-"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str, json_lines: bool) -> None:
    """Root logging for a service process."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def request_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``x-request-id`` (at most 64 characters), or a new one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value[:64]
    return f"{_PROCESS_PREFIX}{next(_CALLS) & 0xFFFFFFFF:08x}"


# Made-up request ids: this process's random prefix and a counter. They only tie log lines
# together, so they need to be unique, not unguessable; ``secrets.token_hex`` cost a
# getrandom system call on every call.
_PROCESS_PREFIX = secrets.token_hex(4)
_CALLS = itertools.count(1)
