"""Brute-force protection: too many failed authentications from one client IP lock it out.

Runs before authentication. Failures are counted in the ``complete`` phase (any 401 from a
request that did not authenticate); once ``max_failures`` fall within ``window`` seconds, that IP
gets 429 with Retry-After for ``duration`` seconds, and the lockout is logged once (and, with
:class:`~keygate.events.SecurityEvents`, audited and alerted once).
"""

from __future__ import annotations

import logging
import time
from collections import deque

from ..access_config import Lockout
from ..chain import Guard
from ..context import Context
from ..errors import AuthenticationFailed, KeygateError, RateLimited
from ..events import SecurityEvents
from .auth import UNKNOWN

log = logging.getLogger("keygate.access")
_MAX_TRACKED = 100_000  # bound memory under a spray from many addresses


class AuthLockout(Guard):
    name = "lockout"
    needs = frozenset({"client_ip"})

    def __init__(self, settings: Lockout, events: SecurityEvents | None = None) -> None:
        self._settings = settings
        self._events = events
        self._failures: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}

    def request(self, ctx: Context) -> KeygateError | None:
        until = self._locked.get(ctx.client_ip)
        if until is None:
            return None
        now = time.monotonic()
        if now >= until:
            del self._locked[ctx.client_ip]
            return None
        return RateLimited(
            "Too many failed authentication attempts from your address; try again later.",
            code="auth_locked_out",
            retry_after=until - now,
        )

    def complete(self, ctx: Context) -> None:
        error = ctx.error
        if not isinstance(error, AuthenticationFailed):
            return
        # A request that did not authenticate; or a honeytoken's, answered exactly as an unknown
        # key (the same UNKNOWN value), which must count the same, or its holder could tell.
        if ctx.key is not None and error is not UNKNOWN:
            return
        ip = ctx.client_ip
        now = time.monotonic()
        window = self._failures.get(ip)
        if window is None:
            if len(self._failures) >= _MAX_TRACKED:
                self._prune(now)
            window = self._failures[ip] = deque()
        window.append(now)
        while window and window[0] <= now - self._settings.window:
            window.popleft()
        if len(window) >= self._settings.max_failures and ip not in self._locked:
            if len(self._locked) >= _MAX_TRACKED:
                self._prune(now)
            self._locked[ip] = now + self._settings.duration
            del self._failures[ip]
            log.warning(
                "client locked out after repeated authentication failures",
                extra={
                    "client_ip": ip,
                    "failures": self._settings.max_failures,
                    "window_s": self._settings.window,
                    "lockout_s": self._settings.duration,
                },
            )
            if self._events is not None:  # an audit entry and an alert, written off this path
                s = self._settings
                self._events.lockout(ip, s.max_failures, s.window, s.duration)

    def _prune(self, now: float) -> None:
        """Forget failures past their window and lockouts that are over (a spray from many
        addresses must not grow either without bound)."""
        horizon = now - self._settings.window
        for ip in [ip for ip, w in self._failures.items() if not w or w[-1] <= horizon]:
            del self._failures[ip]
        if len(self._failures) >= _MAX_TRACKED:
            self._failures.clear()
        for ip in [ip for ip, until in self._locked.items() if until <= now]:
            del self._locked[ip]
