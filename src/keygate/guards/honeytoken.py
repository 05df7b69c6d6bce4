"""Honeytoken keys: keys no one should ever use, created to catch a leak.

Any use is refused exactly like an unknown key, so whoever holds it learns nothing: the same
status, body and code (the very ``UNKNOWN`` value), the same failure accounting (the lockout counts
it as an authentication failure, see :mod:`keygate.guards.lockout`), and no extra time before the
answer: the high-severity alert (client IP, request headers) is logged from the event loop's next
turn, after the answer was handed to the server, not on the request path, and, with
:class:`~keygate.events.SecurityEvents`, audited (``security.honeytoken_used``) and sent to the
alert sinks, both from queues. Header values are
redacted; credentials-bearing headers are never logged at all.
"""

from __future__ import annotations

import asyncio
import logging

from ..chain import Guard
from ..context import Context
from ..errors import KeygateError
from ..events import SecurityEvents
from ..logs import redact
from ..types import KeyRecord
from .auth import UNKNOWN

log = logging.getLogger("keygate.alert")

_NEVER_LOGGED = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "openai-api-key"}
)


def is_honeytoken(policy: dict[str, object]) -> bool:
    return policy.get("honeytoken") is True


def safe_headers(headers: dict[str, str]) -> dict[str, str]:
    """Request headers fit for an alert: credentials dropped, key-shaped values masked."""
    return {k: redact(v[:300]) for k, v in headers.items() if k not in _NEVER_LOGGED}


class Honeytoken(Guard):
    """Runs right after authentication."""

    name = "honeytoken"
    needs = frozenset({"key", "client_ip"})

    def __init__(self, events: SecurityEvents | None = None) -> None:
        self._events = events

    def request(self, ctx: Context) -> KeygateError | None:
        key = ctx.key
        if key is None or key.policy.get("honeytoken") is not True:  # (is_honeytoken, inlined)
            return None
        try:
            asyncio.get_running_loop().call_soon(_alert, key, ctx, self._events)
        except RuntimeError:  # no event loop (a guard driven by hand): log it now
            _alert(key, ctx, self._events)
        return UNKNOWN


def _alert(key: KeyRecord, ctx: Context, events: SecurityEvents | None = None) -> None:
    if events is not None:  # the audit entry and the alert (queued; written and sent elsewhere)
        events.honeytoken_used(
            key.id,
            key.name,
            ctx.client_ip,
            peer_ip=ctx.peer_ip,
            method=ctx.method,
            path=redact(ctx.path[:200]),
            request_id=ctx.request_id,
            headers=safe_headers(ctx.headers),
        )
    log.critical(
        "honeytoken key used: a keygate key that should never be used was presented",
        extra={
            "alert": "honeytoken_used",
            "severity": "high",
            "key_id": key.id,
            "key_name": key.name,
            "client_ip": ctx.client_ip,
            "peer_ip": ctx.peer_ip,
            "method": ctx.method,
            "path": redact(ctx.path[:200]),
            "headers": safe_headers(ctx.headers),
            "request_id": ctx.request_id,
        },
    )
