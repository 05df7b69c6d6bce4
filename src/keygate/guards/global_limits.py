"""Protect the upstream account: a global cap on requests per second and on requests in flight.

The last guard before forwarding, so requests refused earlier never use global capacity. Excess
waits in a bounded queue for up to ``queue_timeout`` seconds; past that (or with the queue full)
it gets 503 with ``Retry-After``. An upstream 429 is passed to the client with its own
``Retry-After`` (the relay keeps that header) and counted here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from time import monotonic

from ..chain import Guard
from ..context import Context
from ..errors import KeygateError, UpstreamUnavailable
from ..limitconf import GlobalLimits

log = logging.getLogger("keygate.limits")


def _busy(retry_after: float) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        "The gateway is at its upstream capacity; please retry shortly.",
        code="gateway_busy",
        headers=[("retry-after", str(max(1, int(retry_after + 0.999))))],
    )


class GlobalLimit(Guard):
    """Global caps are per gateway process (the upstream account is one), so they stay in memory.

    This class has no queue (``queue: 0``, the default): excess is refused at once, so its request
    phase never waits and is a plain method. :class:`QueuedGlobalLimit` waits for capacity.
    """

    name = "global"

    def __init__(self, limits: GlobalLimits) -> None:
        self._limits = limits
        self._interval = 1.0 / limits.rps if limits.rps else 0.0  # seconds per request; 0: no cap
        self._tat = 0.0  # GCRA's theoretical arrival time of the rps bucket (monotonic s)
        self._cap = limits.max_concurrent
        self._in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._waiting = 0
        self.upstream_429 = 0

    def _take(self, now: float) -> float:
        """One request from the rps bucket: 0.0 when taken, else the seconds to wait (nothing taken).

        The same GCRA as :class:`~keygate.counters.memory.MemoryCounters` for one rate of
        ``rps`` per second at cost 1, kept here as one float: the global caps are per process.
        """
        tat = self._tat
        if tat < now:
            tat = now
        after = tat + self._interval
        if after - now > 1.0 + 1e-9:
            return after - now - 1.0
        self._tat = after
        return 0.0

    def request(self, ctx: Context) -> KeygateError | None:
        if self._interval:
            wait = self._take(monotonic())
            if wait:
                return _busy(wait)
        if self._cap is not None:
            if self._in_flight >= self._cap:
                return _busy(1.0)
            self._in_flight += 1
            ctx.extras["global_slot"] = True
        return None

    def response_start(self, ctx: Context, status: int, headers: list[tuple[str, str]]) -> None:
        if status == 429:
            self.upstream_429 += 1
            log.warning("upstream rate limited the gateway", extra={"upstream_429_total": self.upstream_429})

    def complete(self, ctx: Context) -> None:
        if ctx.extras.pop("global_slot", None) is not None:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand our slot to the longest waiter
                return
        self._in_flight -= 1


class QueuedGlobalLimit(GlobalLimit):
    """Global caps with a bounded queue: excess waits up to ``queue_timeout`` for capacity."""

    async def request(self, ctx: Context) -> KeygateError | None:  # type: ignore[override]
        deadline = time.monotonic() + self._limits.queue_timeout
        if self._interval:
            while True:
                now = time.monotonic()
                wait = self._take(now)
                if not wait:
                    break
                if self._waiting >= self._limits.queue or now + wait > deadline:
                    return _busy(wait)
                self._waiting += 1
                try:
                    await asyncio.sleep(wait)
                finally:
                    self._waiting -= 1
        if self._cap is not None:
            if self._in_flight >= self._cap:
                if self._waiting >= self._limits.queue:
                    return _busy(1.0)
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                self._waiting += 1
                try:
                    await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    pass
                except BaseException:
                    if fut.done() and not fut.cancelled():
                        self._release()  # handed a slot while being cancelled: pass it on
                    raise
                finally:
                    self._waiting -= 1
                if fut.cancelled() or not fut.done():
                    return _busy(1.0)
                # the slot was handed over by complete(): in_flight already counts us
            else:
                self._in_flight += 1
            ctx.extras["global_slot"] = True
        return None


def global_limit(limits: GlobalLimits) -> GlobalLimit:
    """The plain guard unless requests may queue for capacity."""
    return QueuedGlobalLimit(limits) if limits.queue > 0 else GlobalLimit(limits)
