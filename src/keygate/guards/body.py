"""Read and check the request body: size limit, content type, JSON, model and stream flags.

A declared Content-Length over the limit gets 413 before a byte of the body is read; a chunked
body is counted as it arrives and cut off at the limit. A client that stalls mid-body is timed
out, and one that vanishes is recorded as such.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson

from ..chain import Context, Guard
from ..errors import InvalidRequest, KeygateError, PayloadTooLarge, UnsupportedMediaType

# Routes whose streamed responses can carry a usage chunk when asked with include_usage.
USAGE_OPTION_ROUTES = frozenset({"chat.completions", "completions"})
_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*\r\n([^\r\n]{1,200})\r\n')


class ClientGone(Exception):
    """The client went away while sending its body."""


class BodyReader(Guard):
    name = "body"

    def __init__(self, max_bytes: int, read_timeout: float = 60.0) -> None:
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout
        self._too_large = PayloadTooLarge(f"Request body is larger than the {max_bytes} byte limit.")

    async def request(self, ctx: Context) -> KeygateError | None:
        route = ctx.route
        assert route is not None
        if route.body == "none":
            return None
        declared = ctx.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return InvalidRequest("Invalid Content-Length header.")
            if int(declared) > self.max_bytes:
                return self._too_large
        ctype = ctx.headers.get("content-type", "")
        if route.body == "json" and not ctype.startswith("application/json"):
            return UnsupportedMediaType("Content-Type must be application/json for this endpoint.")
        if route.body == "multipart" and not ctype.startswith("multipart/form-data"):
            return UnsupportedMediaType("Content-Type must be multipart/form-data for this endpoint.")
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await self._read(ctx, declared is not None)
        except TimeoutError:
            return InvalidRequest("Timed out reading the request body.", code="request_timeout")
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
        except (TimeoutError, asyncio.CancelledError):
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
        ctx.stream = data.get("stream") is True and ctx.route is not None and ctx.route.streamable
        if ctx.stream and ctx.route is not None and ctx.route.name in USAGE_OPTION_ROUTES:
            options = data.get("stream_options")
            if not isinstance(options, dict) or options.get("include_usage") is not True:
                # Ask upstream for the usage chunk so the request can be accounted; the streaming
                # relay hides that extra chunk from this client, which did not ask for it.
                data["stream_options"] = {
                    **(options if isinstance(options, dict) else {}),
                    "include_usage": True,
                }
                ctx.client_wants_usage = False
                ctx.body = orjson.dumps(data)
        return None
