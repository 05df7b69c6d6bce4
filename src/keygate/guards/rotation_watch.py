"""Warn ahead of time about client keys due for rotation or expiry: at start, then hourly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ..chain import Guard
from ..keycache import KeyCache
from ..rotation import due_keys

log = logging.getLogger("keygate")

CHECK_EVERY = 3600.0


class RotationWatch(Guard):
    """No request phase: a background check only (so it costs nothing per request)."""

    name = "rotation_watch"

    def __init__(self, keys: KeyCache, warning_days: float) -> None:
        self._keys = keys
        self._window = warning_days * 86400
        self._task: asyncio.Task[None] | None = None

    def check(self) -> int:
        now = time.time()
        due = due_keys(self._keys.records(), now, self._window)
        for d in due:
            log.warning(
                f"client key due for {d.reason}",
                extra={
                    "key_id": d.key.id,
                    "key_name": d.key.name,
                    "reason": d.reason,
                    "due_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.when)),
                    "overdue": d.when <= now,
                },
            )
        return len(due)

    async def _loop(self) -> None:
        while True:
            try:
                self.check()
            except Exception:
                log.exception("rotation check failed")
            await asyncio.sleep(CHECK_EVERY)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
