"""``python -m token_api``: serve TokenService and ScheduleService until SIGTERM."""

from __future__ import annotations

import os
import sys

from token_api.config import TokenApiSettings
from token_api.server import TokenApi
from token_api.workers import supervise
from waiting_core.cli import run_service
from waiting_core.settings import ConfigError, load


def main() -> int:
    """One process, or a supervisor of TOKEN_API_WORKERS processes on one port."""
    try:
        settings = load(TokenApiSettings, os.environ)
    except ConfigError:
        settings = None  # run_service reports it
    if settings is not None and settings.workers > 1 and sys.argv[1:] == []:
        if settings.port == 0:
            print("token_api: TOKEN_API_WORKERS > 1 needs a fixed TOKEN_API_PORT", file=sys.stderr)
            return 2
        return supervise(settings)
    return run_service(
        "token_api",
        "gRPC TokenService and admin ScheduleService of the waiting room.",
        TokenApiSettings,
        TokenApi,
    )


if __name__ == "__main__":
    sys.exit(main())
