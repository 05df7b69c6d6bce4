"""Account and log every request, whatever happened to it (the ``complete`` phase)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..chain import Guard
from ..context import Context
from ..types import UsageRow

if TYPE_CHECKING:
    from ..recorder import Recorder


class Record(Guard):
    name = "record"

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def complete(self, ctx: Context) -> None:
        route = ctx.route
        usage = ctx.usage
        self._recorder.record(
            UsageRow(
                ts=ctx.ts,
                request_id=ctx.request_id,
                key_id=ctx.key.id if ctx.key is not None else None,
                route=route.name if route is not None else "-",
                method=ctx.method,
                path=ctx.path if route is not None else ctx.path[:200],
                model=ctx.model[:200] if ctx.model else None,
                status=ctx.status,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                latency_ms=round(ctx.latency_ms, 3),
                client_ip=ctx.client_ip,
                upstream=ctx.upstream.name if ctx.upstream is not None else None,
                stream=ctx.stream,
                error_code=ctx.error.code if ctx.error is not None else None,
            )
        )
