"""Read and check the request body: size limit, content type, JSON, model and stream flags.

A declared Content-Length over the limit gets 413 before a byte of the body is read; a chunked
body is counted as it arrives and cut off at the limit. A client that stalls mid-body is timed
out, and one that vanishes is recorded as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import orjson

from ..chain import Guard
from ..context import Context
from ..errors import ClientGone, InvalidRequest, KeygateError, PayloadTooLarge, UnsupportedMediaType
from ..metering import ask_for_usage

_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*\r\n([^\r\n]{1,200})\r\n')


class Deadlines:
    """One sweeper for every in-flight body read, instead of a timer per request.

    ``asyncio.timeout`` costs a timer-heap entry and a running-loop lookup on every request; here a
    read registers its task in a dict, and a background task wakes every ``resolution`` seconds to
    cancel reads past their deadline. A read may run up to ``resolution`` longer than its limit.
    """

    def __init__(self, timeout: float, resolution: float = 0.25) -> None:
        self.timeout = timeout
        self.resolution = min(resolution, timeout)
        self._reads: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def track(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task(self._loop)
        if task is not None:
            self._reads[task] = time.monotonic() + self.timeout
        return task

    def done(self, task: asyncio.Task[Any] | None) -> bool:
        """Stop tracking ``task``; True if it was cancelled for running out of time."""
        if task is None:
            return False
        self._reads.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = asyncio.create_task(self._sweep(), name="keygate-body-deadlines")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.resolution)
            now = time.monotonic()
            for task, deadline in list(self._reads.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()


class BodyReader(Guard):
    name = "body"
    provides = frozenset({"body", "json", "model", "stream", "client_wants_usage"})

    def __init__(self, max_bytes: int, read_timeout: float = 60.0) -> None:
        self.max_bytes = max_bytes
        self._deadlines = Deadlines(read_timeout)
        self._too_large = PayloadTooLarge(f"Request body is larger than the {max_bytes} byte limit.")
        self._timed_out = InvalidRequest("Timed out reading the request body.", code="request_timeout")

    async def start(self) -> None:
        await self._deadlines.start()

    async def stop(self) -> None:
        await self._deadlines.stop()

    async def request(self, ctx: Context) -> KeygateError | None:
        route = ctx.route
        assert route is not None
        if route.body == "none":
            return None
        declared = ctx.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                return InvalidRequest("Invalid Content-Length header.")
            if int(declared) > self.max_bytes:
                return self._too_large
        ctype = ctx.headers.get("content-type", "")
        if route.body == "json" and not ctype.startswith("application/json"):
            return UnsupportedMediaType("Content-Type must be application/json for this endpoint.")
        if route.body == "multipart" and not ctype.startswith("multipart/form-data"):
            return UnsupportedMediaType("Content-Type must be multipart/form-data for this endpoint.")
        # The body read is the only await between track() and done(), so a sweeper cancel can only
        # land on it.
        task = self._deadlines.track()
        try:
            body = await self._read(ctx, declared is not None)
        except asyncio.CancelledError:
            if self._deadlines.done(task):
                return self._timed_out
            raise
        finally:
            self._deadlines.done(task)
        if body is None:
            return self._too_large
        ctx.body = body
        if route.body == "json":
            return self._parse_json(ctx)
        m = _MULTIPART_MODEL.search(body)
        if m:
            ctx.model = m.group(1).decode("utf-8", "replace")
        return None

    async def _read(self, ctx: Context, has_length: bool) -> bytes | None:
        try:
            if has_length:
                data: bytes = await ctx.proto()
                return data if len(data) <= self.max_bytes else None
            parts: list[bytes] = []
            size = 0
            async for part in ctx.proto:
                size += len(part)
                if size > self.max_bytes:
                    return None
                parts.append(part)
            return b"".join(parts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ClientGone from exc

    def _parse_json(self, ctx: Context) -> KeygateError | None:
        try:
            data: Any = orjson.loads(ctx.body)
        except orjson.JSONDecodeError:
            return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
        if not isinstance(data, dict):
            return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            return InvalidRequest("'model' must be a string.", param="model")
        ctx.model = model
        ctx.json = data
        route = ctx.route
        if route is not None and route.streams and data.get("stream") is True:
            ctx.stream = True
            ask_for_usage(ctx)  # so the stream can be accounted (metering.py)
        return None
