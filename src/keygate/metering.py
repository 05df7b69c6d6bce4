"""The usage meter: every token count keygate knows about a request comes from here.

- :func:`ask_for_usage` makes sure a stream reports its usage: on routes whose streams report it
  only when asked (``Route.usage_option``), it sets ``stream_options.include_usage`` and remembers
  that the client did not ask for it itself.
- :func:`usage_from_json` reads the ``usage`` of a whole JSON answer.
- :class:`StreamMeter` passes a server-sent event stream through as whole events, reads the usage
  event, hides the usage-only chunk from a client that did not ask for it, and counts the events
  that carried output (``Usage.streamed``: each carries at least one token, so the count is a lower
  bound of the output a stream produced, for streams that end before reporting usage).

Guards read the result in ``ctx.usage``; none of them parses an answer itself.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson

from .context import Context
from .types import Usage

_MAX_PENDING = 1 << 20  # an "event" this large without a boundary is passed through as is


def ask_for_usage(ctx: Context) -> None:
    """Ask the upstream for the usage chunk of a stream that would not report it otherwise."""
    route = ctx.route
    if not (ctx.stream and route is not None and route.usage_option and ctx.json is not None):
        return
    options = ctx.json.get("stream_options")
    if not isinstance(options, dict) or options.get("include_usage") is not True:
        asked = options if isinstance(options, dict) else {}
        ctx.set_json("stream_options", {**asked, "include_usage": True})
        ctx.client_wants_usage = False


def usage_from_json(body: bytes, usage: Usage) -> None:
    """Fill ``usage`` from the last ``"usage"`` object of a JSON answer, without parsing it all."""
    idx = body.rfind(b'"usage"')
    if idx < 0:
        return
    start = body.find(b"{", idx)
    if start < 0 or body[idx + 7 : start].strip(b" \t\r\n:"):
        return
    # The usage object nests at most a couple of detail objects: try each closing brace in turn
    # until the braces balance (C-level searches, no per-byte Python loop).
    end = start
    for _ in range(8):
        end = body.find(b"}", end + 1)
        if end < 0:
            return
        candidate = body[start : end + 1]
        if candidate.count(b"{") == candidate.count(b"}"):
            with contextlib.suppress(orjson.JSONDecodeError):
                fill_usage(orjson.loads(candidate), usage)
            return


def fill_usage(data: Any, usage: Usage) -> None:
    """Copy token counts from an OpenAI usage object (chat, completions, embeddings or responses)."""
    if not isinstance(data, dict):
        return
    prompt = data.get("prompt_tokens", data.get("input_tokens"))
    completion = data.get("completion_tokens", data.get("output_tokens", 0))
    if isinstance(prompt, int):
        usage.prompt_tokens = prompt
    if isinstance(completion, int):
        usage.completion_tokens = completion
    details = data.get("prompt_tokens_details") or data.get("input_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        usage.cached_tokens = details["cached_tokens"]


class StreamMeter:
    """Splits an SSE byte stream into whole events, meters them, and filters the usage chunk.

    Each upstream chunk is forwarded as soon as it completes at least one event (a partial event is
    held only until its terminating blank line arrives).
    """

    __slots__ = ("_event", "_hide_usage_chunk", "_pending", "_usage")

    def __init__(self, ctx: Context) -> None:
        self._usage = ctx.usage
        self._pending = b""
        self._hide_usage_chunk = not ctx.client_wants_usage
        route = ctx.route
        self._event = route.output_event if route is not None else ()

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
                return self._count(data)
            self._pending = data
            return b""
        ready, self._pending = data[: cut + 2], data[cut + 2 :]
        if b'"usage"' not in ready:
            return self._count(ready)
        return self._count(self._process(ready))

    def flush(self) -> bytes:
        """Whatever is left when the upstream stream ends."""
        rest, self._pending = self._pending, b""
        return self._count(self._process(rest) if b'"usage"' in rest else rest)

    def _count(self, data: bytes) -> bytes:
        event = self._event
        if event and data:
            self._usage.streamed += data.count(event[0]) - data.count(event[1])
        return data

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
            fill_usage(usage, self._usage)
            return self._hide_usage_chunk and data.get("choices") == []
        return False
