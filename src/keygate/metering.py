"""The usage meter: every token count keygate knows about a request comes from here.

- :func:`ask_for_usage` makes sure a stream reports its usage: on routes whose streams report it
  only when asked (``Route.usage_option``), it sets ``stream_options.include_usage`` and remembers
  that the client did not ask for it itself.
- :func:`usage_from_json` reads the top-level ``usage`` of a whole JSON answer (parsed in full:
  a ``usage`` key elsewhere in the answer, such as client-set ``metadata`` that the Responses API
  echoes after the real one, is never taken for it).
- :class:`StreamMeter` passes a server-sent event stream through as whole events, reads the usage
  of the events that carry it (the event's own top-level ``usage``, or ``response.usage`` on the
  Responses API), hides the usage-only chunk from a client that did not ask for it, and counts the
  events that carried output (``Usage.streamed``: text, refusal, tool-call argument and reasoning
  deltas, see ``Route.output_events``; each carries at least one token, so the count is a lower
  bound of the output a stream produced, which a budget holds a stream to as it passes). Only
  streams a budget watches are counted (``Usage.counted``).

``Usage.reported`` says whether any usage was read; a request without it is charged its
reservation by the limit guards (``guards/_estimate.py``).

Guards read the result in ``ctx.usage``; none of them parses an answer itself.
"""

from __future__ import annotations

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
    """Fill ``usage`` from the top-level ``usage`` object of a JSON answer (nothing if the answer
    is not a JSON object, or has none). The whole answer is parsed: about 2-4 µs for a 1-2 KB
    chat answer with orjson."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if type(data) is dict:
        fill_usage(data.get("usage"), usage)


def fill_usage(data: Any, usage: Usage) -> None:
    """Copy token counts from an OpenAI usage object (chat, completions, embeddings or responses)."""
    if not isinstance(data, dict):
        return
    prompt = data.get("prompt_tokens", data.get("input_tokens"))
    completion = data.get("completion_tokens", data.get("output_tokens"))
    # type() is int: a bool is not a token count
    # A negative count would pay spend back: not a count (the reservation is charged instead).
    if type(prompt) is int and prompt >= 0:
        usage.prompt_tokens = prompt
        usage.reported = True
    if type(completion) is int and completion >= 0:
        usage.completion_tokens = completion
        usage.reported = True
    details = data.get("prompt_tokens_details") or data.get("input_tokens_details")
    if (
        isinstance(details, dict)
        and type(details.get("cached_tokens")) is int
        and details["cached_tokens"] >= 0
    ):
        usage.cached_tokens = details["cached_tokens"]


class StreamMeter:
    """Splits an SSE byte stream into whole events, meters them, and filters the usage chunk.

    Each upstream chunk is forwarded as soon as it completes at least one event (a partial event is
    held only until its terminating blank line arrives).
    """

    __slots__ = ("_events", "_hide_usage_chunk", "_pending", "_usage")

    def __init__(self, ctx: Context) -> None:
        self._usage = ctx.usage
        self._pending = b""
        self._hide_usage_chunk = not ctx.client_wants_usage
        route = ctx.route
        # (only a stream whose output someone watches is counted: see Usage.counted)
        self._events = route.output_events if route is not None and ctx.usage.counted else ()

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
        if data:
            counted = 0
            for full, empty in self._events:  # (C-level counts; one to three kinds per route)
                counted += data.count(full) - data.count(empty)
            if counted:
                self._usage.streamed += counted
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
