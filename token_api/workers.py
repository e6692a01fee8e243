"""``TOKEN_API_WORKERS=N``: N token_api processes serving one port with SO_REUSEPORT.

One Python process uses one core for its event loop. On a bigger machine, N workers share
the port (the kernel spreads connections across them); each is a whole token_api with its
own pools, producer and batchers, so nothing is shared but the database and the broker,
which is what several instances do anyway (derived ids keep I5 across them). Worker i
serves /metrics on TOKEN_API_METRICS_PORT + i.

This supervisor starts the workers, passes SIGTERM and SIGINT on to them, and exits when
they have. If one dies, it stops the others and exits non-zero, so that the process
manager (systemd, Kubernetes, docker) restarts the whole set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from token_api.config import TokenApiSettings


def supervise(settings: TokenApiSettings) -> int:
    """Run ``settings.workers`` token_api processes until a signal or a worker's exit."""
    workers = [_start_worker(settings, index) for index in range(settings.workers)]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(worker.poll() is None for worker in workers):
        time.sleep(0.2)
    if not stopping:
        print("token_api: a worker exited; stopping the others", file=sys.stderr)
        forward(signal.SIGTERM, None)
    for worker in workers:
        worker.wait()
    return 0 if stopping else 1


def _start_worker(settings: TokenApiSettings, index: int) -> subprocess.Popen[bytes]:
    metrics_port = settings.metrics_port + index if settings.metrics_port else 0
    env = {
        **os.environ,
        "TOKEN_API_WORKERS": "1",
        "TOKEN_API_REUSE_PORT": "true",
        "TOKEN_API_METRICS_PORT": str(metrics_port),
    }
    return subprocess.Popen([sys.executable, "-m", "token_api"], env=env)
