"""Brute-force protection: too many failed authentications from one client IP lock it out.

Runs before authentication. Failures are counted in the ``complete`` phase (any 401 from a
request that did not authenticate); once ``max_failures`` fall within ``window`` seconds, that IP
gets 429 with Retry-After for ``duration`` seconds, and the lockout is logged once (and, with
:class:`~keygate.events.SecurityEvents`, audited and alerted once). The counts
live in the counters (``Counters.fail`` and ``Counters.locked``): in process by default, shared by
every instance on Redis, where the check itself still never waits (each instance mirrors the
lockouts that any of them announces).
"""

from __future__ import annotations

import logging

from ..access_config import Lockout
from ..chain import Guard
from ..context import Context
from ..counters import Counters, MemoryCounters
from ..errors import AuthenticationFailed, KeygateError, RateLimited
from ..events import SecurityEvents
from .auth import UNKNOWN

log = logging.getLogger("keygate.access")


class AuthLockout(Guard):
    name = "lockout"
    needs = frozenset({"client_ip"})

    def __init__(
        self, settings: Lockout, counters: Counters | None = None, events: SecurityEvents | None = None
    ) -> None:
        self._settings = settings
        self._events = events
        self._counters: Counters = MemoryCounters() if counters is None else counters
        self._locked = self._counters.locked

    def request(self, ctx: Context) -> KeygateError | None:
        left = self._locked(ctx.client_ip)
        if not left:
            return None
        return RateLimited(
            "Too many failed authentication attempts from your address; try again later.",
            code="auth_locked_out",
            retry_after=left,
        )

    def complete(self, ctx: Context) -> None:
        error = ctx.error
        if not isinstance(error, AuthenticationFailed):
            return
        # A request that did not authenticate; or a honeytoken's, answered exactly as an unknown
        # key (the same UNKNOWN value), which must count the same, or its holder could tell.
        if ctx.key is not None and error is not UNKNOWN:
            return
        s = self._settings
        self._counters.fail(ctx.client_ip, s.window, s.max_failures, s.duration, self._announce)

    def _announce(self, ip: str) -> None:
        s = self._settings
        log.warning(
            "client locked out after repeated authentication failures",
            extra={
                "client_ip": ip,
                "failures": s.max_failures,
                "window_s": s.window,
                "lockout_s": s.duration,
            },
        )
        if self._events is not None:  # an audit entry and an alert, written off this path
            self._events.lockout(ip, s.max_failures, s.window, s.duration)
