"""The guard protocol and the chain that runs guards in order (the order itself: ``guards/__init__``).

Phases (see docs/ARCHITECTURE.md):

=============== ============================================ ===============================
phase           runs                                         may
=============== ============================================ ===============================
request         before forwarding, in chain order             reject with a KeygateError value
response_start  when the upstream answers                     read status and headers
chunk           for each streamed chunk                       cut the stream off (error value)
complete        always, also on error or disconnect           account, record, log
=============== ============================================ ===============================

A guard overrides only the phases it needs; :class:`Chain` calls only overridden methods, so an
unused phase costs nothing on the hot path. A guard's ``request`` phase is a plain method when it
never waits (most guards), or ``async def`` when it does (reading the body, verifying a token,
queueing for a global slot): the chain tells them apart once, when it is built, and calls a plain
one without creating a coroutine.

Guards hand data to each other through typed :class:`~keygate.context.Context` fields. Each guard
names the fields its request phase reads (``needs``) and writes (``provides``); the chain checks at
build time that every need is provided by the app or by an earlier guard, so an order that cannot
work fails when the gateway is built, not on some request.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, Final

from .context import Context
from .errors import KeygateError

log = logging.getLogger("keygate")

# Context fields the app sets before the chain runs.
FROM_APP: Final = frozenset(
    {"request_id", "ts", "method", "path", "query", "headers", "peer_ip", "proto", "route"}
)


class Guard:
    """Base class: override the phases you need. ``name`` identifies the guard in logs."""

    name: ClassVar[str] = "guard"
    needs: ClassVar[frozenset[str]] = frozenset()  # Context fields the request phase reads
    provides: ClassVar[frozenset[str]] = frozenset()  # Context fields the request phase sets

    def request(self, ctx: Context) -> KeygateError | Awaitable[KeygateError | None] | None:
        """Check the request; return an error to reject it. Override as ``def`` or ``async def``."""
        return None

    def response_start(self, ctx: Context, status: int, headers: list[tuple[str, str]]) -> None:
        return None

    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        return None

    def complete(self, ctx: Context) -> None:
        return None

    async def start(self) -> None:
        """Called once when the server starts (background tasks, connections)."""

    async def stop(self) -> None:
        """Called once at shutdown, after the last request completed."""


def _overrides(guard: Guard, phase: str) -> bool:
    return getattr(type(guard), phase) is not getattr(Guard, phase)


def check_order(guards: Sequence[Guard]) -> None:
    """Raise ``ValueError`` naming the first guard that reads a field nothing before it provides."""
    provided = set(FROM_APP)
    for guard in guards:
        missing = guard.needs - provided
        if missing:
            raise ValueError(
                f"guard {guard.name!r} needs {', '.join(sorted(missing))}, which no earlier guard provides"
            )
        provided |= guard.provides


class Chain:
    """Guards in order, with each phase's bound methods precomputed."""

    def __init__(self, guards: Sequence[Guard]) -> None:
        check_order(guards)
        self.guards = tuple(guards)
        # (phase, awaits) pairs: decided here, once, never per request.
        self._request: tuple[tuple[Callable[[Context], Any], bool], ...] = tuple(
            (g.request, inspect.iscoroutinefunction(g.request)) for g in guards if _overrides(g, "request")
        )
        self._response_start = tuple(g.response_start for g in guards if _overrides(g, "response_start"))
        self._chunk = tuple(g.chunk for g in guards if _overrides(g, "chunk"))
        # complete runs in reverse order, like unwinding a stack: the outermost guard sees the
        # final state of the request after every inner guard settled.
        self._complete = tuple(g.complete for g in reversed(guards) if _overrides(g, "complete"))

    @property
    def watches_chunks(self) -> bool:
        return bool(self._chunk)

    async def request(self, ctx: Context) -> KeygateError | None:
        for phase, awaits in self._request:
            err: KeygateError | None = await phase(ctx) if awaits else phase(ctx)
            if err is not None:
                return err
        return None

    def response_start(self, ctx: Context, status: int, headers: list[tuple[str, str]]) -> None:
        for phase in self._response_start:
            phase(ctx, status, headers)

    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        for phase in self._chunk:
            err = phase(ctx, data)
            if err is not None:
                return err
        return None

    def complete(self, ctx: Context) -> None:
        for phase in self._complete:
            try:
                phase(ctx)
            except Exception:
                # One guard's bug must not stop the others from accounting this request.
                log.exception("guard complete phase failed", extra={"request_id": ctx.request_id})

    async def start(self) -> None:
        for g in self.guards:
            await g.start()

    async def stop(self) -> None:
        for g in reversed(self.guards):
            await g.stop()
