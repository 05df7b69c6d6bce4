"""The guard protocol and the one function that orders the chain (the context: context.py).

Phases (see ARCHITECTURE.md):

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
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from .context import Context
from .errors import KeygateError

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("keygate")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled (keygate.native); other guards are not
class Guard:
    """Base class: override the phases you need. ``name`` identifies the guard in logs."""

    name = "guard"

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


class Chain:
    """Guards in order, with each phase's bound methods precomputed."""

    def __init__(self, guards: Sequence[Guard]) -> None:
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


def build_chain(settings: Settings, keys: Any, recorder: Any, store: Any = None) -> Chain:
    """The one place the guard order is decided.

    ip → lockout → auth → honeytoken → access policy → body → request policy → rate limits →
    budget → global upstream caps → forward; the recorder's complete phase accounts and logs
    every request, rejected or not.
    """
    from .counters import MemoryCounters
    from .guards.access import build_authenticate
    from .guards.body import BodyReader
    from .guards.budget import budget_guard
    from .guards.client_ip import ClientIP
    from .guards.global_limits import global_limit
    from .guards.honeytoken import Honeytoken
    from .guards.lockout import AuthLockout
    from .guards.policy import AccessPolicy, RequestPolicy
    from .guards.ratelimit import rate_limit
    from .guards.record import Record
    from .guards.rotation_watch import RotationWatch
    from .spend import SpendBook

    access = settings.access
    limits = settings.limits
    counters = MemoryCounters()  # in process; a Redis implementation plugs in here
    return Chain(
        [
            Record(recorder),
            RotationWatch(keys, settings.rotation_warning_days),
            ClientIP(access.network),
            AuthLockout(access.network.lockout),
            build_authenticate(settings, keys),
            Honeytoken(),
            AccessPolicy(),
            BodyReader(settings.max_body_bytes, settings.body_read_timeout),
            RequestPolicy(),
            rate_limit(counters, limits),
            budget_guard(counters, limits, SpendBook(counters, store, settings.usage_flush_interval)),
            global_limit(limits.global_),
        ]
    )
