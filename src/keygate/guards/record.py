"""Account and log every request, whatever happened to it (the ``complete`` phase); count the
requests refused with 403 per key (``SecurityEvents.policy_denied``: a burst is a security event)."""

from __future__ import annotations

from time import perf_counter

from ..chain import Guard
from ..context import Context
from ..events import SecurityEvents
from ..recorder import Recorder
from ..types import UsageRow


class Record(Guard):
    name = "record"

    def __init__(self, recorder: Recorder, events: SecurityEvents | None = None) -> None:
        self._recorder = recorder
        self._events = events

    def complete(self, ctx: Context) -> None:
        route = ctx.route
        usage = ctx.usage
        key, upstream, error = ctx.key, ctx.upstream, ctx.error
        if error is not None and error.status == 403 and key is not None and self._events is not None:
            self._events.policy_denied(key.id, key.name, error.code or "", ctx.client_ip)  # (counted only)
        # Positional, in UsageRow's field order: keyword arguments cost more, on every request.
        self._recorder.record(
            UsageRow(
                ctx.ts,
                ctx.request_id,
                key.id if key is not None else None,
                route.name if route is not None else "-",
                ctx.method,
                ctx.path if route is not None else ctx.path[:200],
                ctx.model[:200] if ctx.model else None,
                ctx.status,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                round((perf_counter() - ctx.started) * 1000.0, 3),
                ctx.client_ip,
                upstream.name if upstream is not None else None,
                ctx.stream,
                error.code if error is not None else None,
                usage.estimated,
            )
        )
