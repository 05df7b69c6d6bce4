"""The request path's side of behavioural analytics: record features, honour the actions.

- :class:`AnomalyRecord` runs right after the client-IP guard. Its request phase refuses a client
  network that a ``block_network`` action blocked (429 ``network_blocked``, with Retry-After:
  it is temporary); its ``complete`` phase appends one feature tuple per request to the
  analyser's buffer (an authenticated request, an authentication failure, or a honeytoken's use).
  The failure's credential is kept only as a keyed fingerprint and its visible prefix.
- :class:`AnomalyGate` runs after authentication and the honeytoken guard (so a honeytoken is
  still answered exactly like an unknown key). It refuses a quarantined key (403
  ``key_quarantined``) and holds a throttled key to ``anomalies.throttle_rpm``. With no action in
  force it costs two truth tests and one dict lookup.
"""

from __future__ import annotations

import time

from ..analytics.features import FAILURE, HONEYTOKEN, REQUEST, credential_prefix, fingerprint
from ..analytics.watch import AnomalyWatch
from ..chain import Guard
from ..context import Context
from ..counters import MemoryCounters, Refused
from ..errors import AuthenticationFailed, KeygateError, PermissionDenied, RateLimited
from ..keycache import KeyCache
from .auth import UNKNOWN, bearer_token

QUARANTINED = PermissionDenied(
    "This API key is quarantined after unusual activity; an administrator must release it.",
    code="key_quarantined",
)


class AnomalyRecord(Guard):
    name = "anomaly_record"
    needs = frozenset({"client_addr"})

    def __init__(self, watch: AnomalyWatch) -> None:
        self._watch = watch
        self._board = watch.board
        self._record = watch.record

    def request(self, ctx: Context) -> KeygateError | None:
        board = self._board
        if not board.blocked:
            return None
        addr = ctx.client_addr
        if addr is None:
            return None
        until = board.blocked_until(addr, time.time())
        if until is None:
            return None
        return RateLimited(
            "Requests from your network are temporarily blocked after repeated failures.",
            code="network_blocked",
            retry_after=until - time.time(),
        )

    def complete(self, ctx: Context) -> None:
        key, error = ctx.key, ctx.error
        if key is not None:
            if error is not None:
                if error is QUARANTINED or error.code == "network_blocked":
                    return  # our own refusals are not the key's behaviour
                if error is UNKNOWN and key.policy.get("honeytoken") is True:
                    self._record(
                        (
                            ctx.ts,
                            key.id,
                            key.team_id,
                            ctx.client_ip,
                            None,
                            None,
                            "-",
                            ctx.status,
                            None,
                            0,
                            0,
                            HONEYTOKEN,
                        )
                    )
                    return
            route, usage = ctx.route, ctx.usage
            self._record(
                (
                    ctx.ts,
                    key.id,
                    key.team_id,
                    ctx.client_ip,
                    ctx.headers.get("user-agent"),
                    ctx.model,
                    route.name if route is not None else "-",
                    ctx.status,
                    error.code if error is not None else None,
                    usage.prompt_tokens + usage.completion_tokens,
                    usage.prompt_tokens,
                    REQUEST,
                )
            )
        elif isinstance(error, AuthenticationFailed) and error.code != "missing_api_key":
            token = bearer_token(ctx) or ""
            self._record(
                (
                    ctx.ts,
                    None,
                    None,
                    ctx.client_ip,
                    fingerprint(token),
                    credential_prefix(token),
                    "-",
                    ctx.status,
                    error.code,
                    0,
                    0,
                    FAILURE,
                )
            )

    async def start(self) -> None:
        await self._watch.start()

    async def stop(self) -> None:
        await self._watch.close()


class AnomalyGate(Guard):
    name = "anomaly_gate"
    needs = frozenset({"key"})

    def __init__(self, watch: AnomalyWatch, keys: KeyCache) -> None:
        self._board = watch.board
        self._keys = keys
        self._counters = MemoryCounters()  # the throttles' own GCRA buckets (in process)

    def request(self, ctx: Context) -> KeygateError | None:
        key = ctx.key
        if key is None:
            return None
        if not key.key_hash:  # a JWT or OAuth principal: no key lookup refreshed the cache
            self._keys.check()
        quarantined = self._keys.quarantined
        if quarantined and key.id in quarantined:
            return QUARANTINED
        throttled = self._board.throttled
        if not throttled:
            return None
        found = throttled.get(key.id)
        if found is None or found[0] <= time.time():
            return None
        taken = self._counters.take_now([found[1]], [1.0], time.monotonic())
        if isinstance(taken, Refused):
            return RateLimited(
                "This API key is temporarily rate limited after unusual activity.",
                code="key_throttled",
                retry_after=taken.retry_after,
            )
        return None
