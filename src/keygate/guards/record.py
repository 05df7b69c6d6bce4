"""Account and log every request, whatever happened to it (the ``complete`` phase): its usage row
for the recorder and, with the timings taken along the way, a fact for the metrics; count the
requests refused with 403 per key (``SecurityEvents.policy_denied``: a burst is a security event)."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..chain import Guard
from ..context import Context
from ..events import SecurityEvents
from ..recorder import Recorder
from ..types import UsageRow


class Record(Guard):
    name = "record"

    def __init__(
        self,
        recorder: Recorder,
        events: SecurityEvents | None = None,
        observe: Callable[[Any], None] | None = None,
    ) -> None:
        self._recorder = recorder
        self._events = events
        self._observe = observe  # metrics.Metrics.observe: (row, started, upstream..., end)

    def complete(self, ctx: Context) -> None:
        route = ctx.route
        usage = ctx.usage
        key, upstream, error = ctx.key, ctx.upstream, ctx.error
        end = perf_counter()
        if error is not None and error.status == 403 and key is not None and self._events is not None:
            self._events.policy_denied(key.id, key.name, error.code or "", ctx.client_ip)  # (counted only)
        # Positional, in UsageRow's field order: keyword arguments cost more, on every request.
        row = UsageRow(
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
            round((end - ctx.started) * 1000.0, 3),
            ctx.client_ip,
            upstream.name if upstream is not None else None,
            ctx.stream,
            error.code if error is not None else None,
            usage.estimated,
        )
        self._recorder.record(row)
        observe = self._observe
        if observe is not None:
            observe((row, ctx.started, ctx.upstream_started, ctx.upstream_ended, ctx.first_chunk, end))
