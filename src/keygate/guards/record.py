"""Account and log every request, whatever happened to it (the ``complete`` phase)."""

from __future__ import annotations

from time import perf_counter

from ..chain import Guard
from ..context import Context
from ..recorder import Recorder
from ..types import UsageRow


class Record(Guard):
    name = "record"

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def complete(self, ctx: Context) -> None:
        route = ctx.route
        usage = ctx.usage
        key, upstream, error = ctx.key, ctx.upstream, ctx.error
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
