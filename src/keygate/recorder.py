"""Usage rows and access-log lines, batched off the request path.

The request path only appends a :class:`~keygate.types.UsageRow` to a list (well under a
microsecond). A background task hands the batch to a dedicated writer thread every
``usage_flush_interval`` seconds, which writes it to the store in one transaction and appends one
JSON line per request to the access log (reopened by :meth:`Recorder.reopen`, on SIGHUP, for
logrotate; its fields are listed in docs/audit.md). A failed write keeps its rows for the next
attempt, and :meth:`Recorder.close` flushes everything at shutdown, so nothing counted is lost.
While the store cannot be written (a networked database away) at most ``write_buffer_rows`` rows
are kept, the oldest dropped beyond that (``batching.ListWriteBehind``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import IO

import orjson

from .batching import ListWriteBehind
from .store import Store
from .types import UsageRow

log = logging.getLogger("keygate.recorder")


@functools.lru_cache(maxsize=4)
def _second(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def access_line(row: UsageRow) -> bytes:
    """One JSON object per request: an ISO ``time`` first, then every field of the row."""
    stamp = f"{_second(int(row.ts))}.{int(row.ts * 1000) % 1000:03d}Z"
    # orjson serialises the slotted dataclass natively, far cheaper than dataclasses.asdict().
    return b'{"time":"' + stamp.encode() + b'",' + orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)[1:]


class Recorder(ListWriteBehind[UsageRow]):
    failure_log = log
    failure_message = "usage flush failed; will retry"

    def __init__(
        self, store: Store, access_log: str = "-", flush_interval: float = 0.5, max_pending: int = 100_000
    ) -> None:
        super().__init__(flush_interval, "keygate-recorder", max_pending)
        self._store = store
        self._path = access_log
        self._reopen = False
        self._log: IO[bytes] = sys.stdout.buffer if access_log == "-" else self._open()

    def _open(self) -> IO[bytes]:
        handle = open(self._path, "ab")  # noqa: SIM115 - held open between batches
        os.chmod(self._path, 0o600)
        return handle

    def reopen(self) -> None:
        """Open the access log file again before the next batch (SIGHUP, after logrotate moved it).
        The writer thread does it, so no batch is split between the old file and the new one."""
        self._reopen = self._path != "-"

    def record(self, row: UsageRow) -> None:
        self._pending.append(row)

    def _write(self, batch: list[UsageRow]) -> None:
        # The store write is the record of truth and is retried on failure; the access log is
        # written once the rows are safe, so a retried batch is never logged twice.
        self._store.write_usage(batch)
        if self._reopen:
            self._reopen = False
            try:
                new = self._open()
            except OSError:
                log.exception("access log could not be reopened; still writing the old file")
            else:
                old, self._log = self._log, new
                try:
                    old.close()
                except OSError:
                    log.exception("access log (before reopening) could not be closed cleanly")
        try:
            self._log.write(b"".join(access_line(r) for r in batch))
            self._log.flush()
        except OSError:
            log.exception("access log write failed", extra={"rows": len(batch)})

    async def close(self) -> None:
        await super().close()
        if self._log is not sys.stdout.buffer:
            try:
                self._log.close()
            except OSError:  # what a failed write left buffered; every row is in the store
                log.exception("access log could not be closed cleanly")
