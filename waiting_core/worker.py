"""A long-lived background task with idempotent ``start``/``stop`` and ``async with``."""

from __future__ import annotations

import abc
import asyncio
import contextlib
from typing import Self


class BackgroundWorker(abc.ABC):
    """Runs ``_run`` in one task from ``start`` until ``stop`` (both safe to call twice)."""

    name = "worker"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    async def _run(self) -> None:
        """The work; runs until cancelled."""

    async def start(self) -> None:
        """Start the task if it is not running."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
