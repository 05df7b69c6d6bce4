"""The shape shared by every write-behind buffer (usage rows, budget spend, audit findings).

The request path only adds to an in-memory buffer. A background task calls :meth:`flush` every
``interval`` seconds, and the subclass's flush hands the batch to a dedicated writer thread, so
the event loop never waits on the database. :meth:`close` stops the timer and flushes what is
left, retrying a failed write a few times before giving up loudly. The timer is only cancelled
while it sleeps: a flush it has begun (its batch taken, the writer thread not yet done) is
awaited, never cut off, since a cancelled flush would lose the batch it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

log = logging.getLogger("keygate")

T = TypeVar("T")


def _nothing() -> None:
    return None


class WriteBehind:
    def __init__(self, interval: float, name: str) -> None:
        self._interval = interval
        self._name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sleeping = False  # the timer task is in its sleep, where cancelling it is safe

    @property
    def pending(self) -> bool:
        """True while something is buffered and not yet written."""
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def written(self) -> None:
        """Flush, and wait until every batch handed to the writer thread so far is written (also
        one the timer's flush handed over just before: the writer runs them in order)."""
        await self.flush()
        await self._in_writer(_nothing)

    async def _in_writer(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while not self._closing:
            self._sleeping = True
            try:
                await asyncio.sleep(self._interval)
            finally:
                self._sleeping = False
            await self.flush()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            if self._sleeping:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task  # a flush under way ends first
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
    the records for the next attempt (logged on ``failure_log`` with ``failure_message``).

    What is kept is bounded: at most ``max_pending`` records (checked at each flush, so between
    two flushes it may exceed that by one interval's worth). Beyond it the oldest are dropped,
    counted in :attr:`dropped` and logged as errors: a database that stays away longer than the
    bound loses its oldest records rather than the process its memory.
    """

    failure_log = log
    failure_message = "write-behind flush failed; will retry"

    def __init__(self, interval: float, name: str, max_pending: int = 100_000) -> None:
        super().__init__(interval, name)
        self._pending: list[T] = []
        self.max_pending = max_pending
        self.dropped = 0
        self._failing_since: float | None = None
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
        self._bound()
        batch, self._pending = self._pending, []
        try:
            await self._in_writer(self._write, batch)
        except Exception as exc:
            self.failures += 1
            self._pending[:0] = batch
            self._bound()
            self._failed(exc, len(batch))
        else:
            if self._failing_since is not None:
                self.failure_log.warning(
                    "write-behind buffer written again after failures",
                    extra={"writer": self._name, "rows": len(batch), "dropped": self.dropped},
                )
                self._failing_since = None

    def _failed(self, exc: Exception, rows: int) -> None:
        # Every failure is logged; the traceback only with the first of a run of them.
        first = self._failing_since is None
        if first:
            self._failing_since = time.monotonic()
        self.failure_log.error(
            self.failure_message,
            exc_info=exc if first else None,
            extra={"rows": rows, "buffered": len(self._pending), "dropped": self.dropped},
        )

    def _bound(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            del self._pending[:excess]
            self.dropped += excess
            self.failure_log.error(
                "write-behind buffer full: oldest records dropped",
                extra={"writer": self._name, "dropped_now": excess, "dropped": self.dropped},
            )

    def _write(self, batch: list[T]) -> None:
        raise NotImplementedError
