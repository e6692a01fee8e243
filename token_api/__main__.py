"""``python -m token_api``: serve TokenService and ScheduleService until SIGTERM."""

from __future__ import annotations

import sys

from token_api.config import TokenApiSettings
from token_api.server import TokenApi
from waiting_core.cli import run_service

if __name__ == "__main__":
    sys.exit(
        run_service(
            "token_api",
            "gRPC TokenService and admin ScheduleService of the waiting room.",
            TokenApiSettings,
            TokenApi,
        )
    )
