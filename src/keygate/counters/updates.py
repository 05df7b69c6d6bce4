"""What finished requests give back to the Redis counters (releases, failed authentications): sent
at once, without a task or a coroutine in between, and never waited for by a request.

With the connection up and nothing held back, an update is written on the connection at once, with
the commands of the same event-loop turn (so it often shares its system call with the next
requests' admits), and its reply is taken by the update itself. When Redis cannot be reached,
updates wait in a bounded queue (:data:`MAX_QUEUED`; past it the oldest are dropped, loudly), and one
background task sends them, as a pipeline, when it is back; an update whose connection broke before
its reply came is queued again. (A connection that broke after Redis ran a script runs it twice:
docs/redis.md says what that can cost.) Updates are independent of one another (each gives back
its own lease and adds its own spend), so they are not kept in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .resp import ReplyError, RespClient, RespConnectionError

log = logging.getLogger("keygate.counters")

MAX_QUEUED = 100_000  # updates waiting for Redis; past this the oldest are dropped
Then = Callable[[Any], None]


class _Update:
    """One update on its way: it takes its own reply (a :class:`~keygate.counters.resp.Waiter`)."""

    __slots__ = ("data", "name", "then", "updates")

    def __init__(self, updates: Updates, name: str, data: bytes, then: Then | None) -> None:
        self.updates, self.name, self.data, self.then = updates, name, data, then

    def done(self) -> bool:
        return False

    def set_result(self, reply: Any) -> None:
        self.updates._in_flight -= 1
        self.updates._answered(self, reply)

    def set_exception(self, exception: BaseException) -> None:
        self.updates._in_flight -= 1
        self.updates._push(self)  # the connection broke before the reply: send it again


class Updates:
    def __init__(
        self, resp: RespClient, load_scripts: Callable[[], Awaitable[None]], warn: Callable[..., None]
    ) -> None:
        self._resp = resp
        self._load_scripts = load_scripts
        self._warn = warn
        self._queue: deque[_Update] = deque()
        self._in_flight = 0  # sent at once, reply not yet in
        self._busy = False  # the background task has a pipeline out
        self._reload = False  # an update found the scripts missing: load them before sending more
        self._wake = asyncio.Event()
        self.pipelines = 0  # pipelines the background task sent (for measuring; never reset)

    def send(self, name: str, data: bytes, then: Then | None) -> None:
        """Send one packed script call; ``then`` gets its reply (an error reply is logged)."""
        update = _Update(self, name, data, then)
        proto = self._resp.connected()
        if proto is not None and not self._queue and not self._reload:
            self._in_flight += 1
            proto.send(data, update)
        else:
            self._push(update)

    def _push(self, update: _Update) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self._queue.popleft()
            self._warn("counter updates dropped: Redis has been unreachable too long")
        self._queue.append(update)
        self._wake.set()

    def _answered(self, update: _Update, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            if str(reply).startswith("NOSCRIPT"):  # (changed nothing) Redis lost its scripts
                self._reload = True
                self._push(update)
            else:  # an answer that will not change: sending it again would not help
                log.error("counter update failed", extra={"script": update.name, "error": str(reply)})
            return
        if update.then is not None:
            try:
                update.then(reply)
            except Exception:
                log.exception("counter update callback failed")

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing sent without its reply."""
        return not self._queue and not self._in_flight and not self._busy

    async def drain(self) -> None:
        """Wait until every update was sent and answered (or Redis is given up on by the caller)."""
        while not self.idle:
            self._wake.set()
            await asyncio.sleep(0.005)

    async def run(self) -> None:
        """The background task: send what is queued, one pipeline at a time, while Redis is back."""
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                try:
                    if self._reload:
                        await self._load_scripts()
                        self._reload = False
                    sent = await self._pipeline()
                except (RespConnectionError, OSError, ReplyError) as exc:
                    sent = False
                    self._warn("redis unreachable: counter updates queued", error=type(exc).__name__)
                if not sent:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                else:
                    backoff = 0.05

    async def _pipeline(self) -> bool:
        """Send everything queued as one pipeline; False if the connection broke (the updates not
        answered are queued again)."""
        proto = await self._resp.connection()
        batch = list(self._queue)
        self._queue.clear()
        futs = [proto.loop.create_future() for _ in batch]
        for update, fut in zip(batch, futs, strict=True):
            proto.send(update.data, fut)
        self.pipelines += 1
        self._busy = True
        try:
            await asyncio.wait(futs)  # (answered in order, or all failed together)
        finally:
            self._busy = False
        broke = False
        for update, fut in zip(batch, futs, strict=True):
            if fut.cancelled() or fut.exception() is not None:
                broke = True
                self._push(update)
            else:
                self._answered(update, fut.result())
        return not broke
