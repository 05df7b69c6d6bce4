"""The shape shared by every write-behind buffer (usage rows, budget spend, audit findings).

The request path only adds to an in-memory buffer. A background task calls :meth:`flush` every
``interval`` seconds, and the subclass's flush hands the batch to a dedicated writer thread, so
the event loop never waits on the database. :meth:`close` stops the timer and flushes what is
left, retrying a failed write a few times before giving up loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

log = logging.getLogger("keygate")

T = TypeVar("T")


class WriteBehind:
    def __init__(self, interval: float, name: str) -> None:
        self._interval = interval
        self._name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> bool:
        """True while something is buffered and not yet written."""
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def _in_writer(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _ in range(3):
            await self.flush()
            if not self.pending:
                break
        if self.pending:
            log.error("buffered records could not be written at shutdown", extra={"writer": self._name})
        self._executor.shutdown(wait=True)


class ListWriteBehind(WriteBehind, Generic[T]):
    """A write-behind buffer of records in a list: the request path appends to ``_pending``; a
    flush hands the whole list to :meth:`_write` in the writer thread and, if that fails, keeps
    the records for the next attempt (logged on ``failure_log`` with ``failure_message``)."""

    failure_log = log
    failure_message = "write-behind flush failed; will retry"

    def __init__(self, interval: float, name: str) -> None:
        super().__init__(interval, name)
        self._pending: list[T] = []
        self.failures = 0  # failed writes so far (for the metrics)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    @property
    def queued(self) -> int:
        """Records waiting for the writer thread (for the metrics)."""
        return len(self._pending)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await self._in_writer(self._write, batch)
        except Exception:
            self.failures += 1
            self.failure_log.exception(self.failure_message, extra={"rows": len(batch)})
            self._pending[:0] = batch

    def _write(self, batch: list[T]) -> None:
        raise NotImplementedError
