"""The guard protocol, the per-request context, and the one function that orders the chain.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from .errors import KeygateError
from .types import KeyRecord, Team, Usage

if TYPE_CHECKING:
    from .config import Settings, Upstream
    from .routes import Route

log = logging.getLogger("keygate")


class Context:
    """Everything one request carries along the chain. No globals, no hidden state."""

    __slots__ = (
        "body",
        "client_ip",
        "client_wants_usage",
        "error",
        "extras",
        "headers",
        "json",
        "key",
        "method",
        "model",
        "path",
        "peer_ip",
        "proto",
        "query",
        "request_id",
        "route",
        "started",
        "status",
        "stream",
        "team",
        "ts",
        "upstream",
        "usage",
    )

    def __init__(
        self,
        request_id: str,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        peer_ip: str,
        proto: Any = None,
    ) -> None:
        self.request_id = request_id
        self.ts = time.time()
        self.started = time.perf_counter()
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-cased names
        self.peer_ip = peer_ip
        self.client_ip = peer_ip
        self.proto = proto
        self.route: Route | None = None
        self.body = b""
        self.json: dict[str, Any] | None = None
        self.model: str | None = None
        self.stream = False
        self.client_wants_usage = True
        self.key: KeyRecord | None = None
        self.team: Team | None = None
        self.upstream: Upstream | None = None
        self.status = 0
        self.usage = Usage()
        self.error: KeygateError | None = None
        self.extras: dict[str, Any] = {}  # per-guard scratch space, keyed by guard name

    @property
    def latency_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def set_json(self, name: str, value: Any) -> None:
        """Set a top-level field of the JSON body, keeping ``json`` and ``body`` in step.

        (Serialising the whole body again is cheaper with orjson than splicing the field into the
        raw bytes, measured up to 16 KiB bodies: orjson is close to a copy for plain strings.)
        """
        data = self.json
        assert data is not None
        data[name] = value
        self.body = orjson.dumps(data)


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
