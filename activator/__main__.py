"""``python -m activator``: admit tokens and serve QueueStatusService until SIGTERM."""

from __future__ import annotations

import sys

from activator.config import ActivatorSettings
from activator.server import Activator
from waiting_core.cli import run_service

if __name__ == "__main__":
    sys.exit(
        run_service(
            "activator",
            "Kafka consumer (group token-activate) that admits waiting tokens, and the gRPC "
            "QueueStatusService.",
            ActivatorSettings,
            Activator,
        )
    )
