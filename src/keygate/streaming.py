"""Server-sent events relay: chunk by chunk, with usage capture from the final chunk.

Each upstream chunk is forwarded as soon as it completes at least one SSE event (a partial event
is held only until its terminating blank line arrives). Events that mention ``"usage"`` are
parsed to capture token counts; the usage-only chunk that keygate asked for on the client's
behalf (``stream_options.include_usage``) is dropped for clients that did not ask for it.
"""

from __future__ import annotations

from typing import Any

import orjson

from .context import Context
from .errors import KeygateError
from .upstream import fill_usage

_MAX_PENDING = 1 << 20  # an "event" this large without a boundary is passed through as is


def sse_error_event(err: KeygateError) -> bytes:
    """A final SSE event carrying an OpenAI-shaped error, for failures after the stream started."""
    payload = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class SSETap:
    """Splits an SSE byte stream into whole events, captures usage, filters the usage chunk."""

    __slots__ = ("_ctx", "_hide_usage_chunk", "_pending")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._pending = b""
        self._hide_usage_chunk = not ctx.client_wants_usage

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now for this upstream chunk (possibly empty)."""
        data = self._pending + chunk if self._pending else chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            cut = data.rfind(b"\r\n\r\n")
            if cut >= 0:
                cut += 2
        if cut < 0:
            if len(data) > _MAX_PENDING:
                self._pending = b""
                return data
            self._pending = data
            return b""
        ready, self._pending = data[: cut + 2], data[cut + 2 :]
        if b'"usage"' not in ready:
            return ready
        return self._process(ready)

    def flush(self) -> bytes:
        """Whatever is left when the upstream stream ends."""
        rest, self._pending = self._pending, b""
        return self._process(rest) if b'"usage"' in rest else rest

    def _process(self, ready: bytes) -> bytes:
        out: list[bytes] = []
        for event in ready.replace(b"\r\n", b"\n").split(b"\n\n"):
            if not event:
                continue
            if b'"usage"' in event and self._capture(event):
                continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def _capture(self, event: bytes) -> bool:
        """Record usage from this event; True if the event should be hidden from the client."""
        payload = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        try:
            data: Any = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(data, dict):
            return False
        usage = data.get("usage")
        if usage is None and isinstance(data.get("response"), dict):
            usage = data["response"].get("usage")  # Responses API: response.completed
        if isinstance(usage, dict):
            fill_usage(usage, self._ctx.usage)
            return self._hide_usage_chunk and data.get("choices") == []
        return False
