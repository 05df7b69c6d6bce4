"""Read and check the request body: size limit, content type, JSON, model and stream flags.

A declared Content-Length over the limit gets 413 before a byte of the body is read; a chunked
body is counted as it arrives and cut off at the limit. A client that stalls mid-body is timed
out, and one that vanishes is recorded as such.

**JSON bodies are canonical**: what is forwarded is what the guards checked. The body must be a
JSON object without a duplicate key at any depth (400 ``duplicate_field``), and is forwarded as
``orjson.dumps`` of the parsed object, never as the bytes the client sent. Duplicates are found
without a second parse: a JSON text has a colon after each key and otherwise only inside strings,
and the canonical form writes every string's colons as they are, so the client's bytes have more
colons than the canonical form exactly when a key was given twice (and so dropped by the parser).
Only a body that writes a colon as an escape (``\\u003a``) is parsed a second time, with a
duplicate check (the standard library's ``object_pairs_hook``). At the top level, a key that is a
policy field in another case (``MODEL``, ``Stream``, or with a letter that case-folds to one:
another decoder may match names without regard to case) is refused the same way. The policy
fields are type-checked in the same pass (:data:`FIELD_TYPES`: 400 ``invalid_type`` naming the
field) before any guard reads them, so the later guards may trust their types; ``null`` counts as
not given, except for ``stream``, which must be a boolean.

**Multipart bodies** are parsed whole by :mod:`keygate.multipart` (strict, linear time): one
``model`` field at most, read as that module describes; a malformed body is 400
``invalid_multipart``. A body over 64 KiB is parsed in 64 KiB steps with a yield to the event loop
between them, so a large upload never holds up other requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, Final

import orjson

from ..chain import Guard
from ..context import Context
from ..errors import ClientGone, InvalidRequest, KeygateError, PayloadTooLarge, UnsupportedMediaType
from ..metering import ask_for_usage
from ..multipart import STEP, FieldScanner, FormError, boundary_of, check_header_lines
from ..routes import OUTPUT_TOKEN_FIELDS

_BOOLEAN, _STRING, _OBJECT, _COUNT = "a boolean", "a string", "an object", "a positive integer"
FIELD_TYPES: Final[dict[str, str]] = {
    "model": _STRING,
    "stream": _BOOLEAN,
    **dict.fromkeys(OUTPUT_TOKEN_FIELDS, _COUNT),
    "n": _COUNT,
    "best_of": _COUNT,
    "background": _BOOLEAN,
    "stream_options": _OBJECT,
    "service_tier": _STRING,
    "metadata": _OBJECT,
}
"""The top-level JSON fields guards act on, and the type each must have when given (not null)."""

FORM_FIELDS: Final = ("model",)  # the multipart fields read (the rest is forwarded unread)
_COLON_ESCAPES: Final = (b"\\u003a", b"\\u003A")
_DUPLICATE = InvalidRequest(
    "The request body gives a field twice; each field may appear once.", code="duplicate_field"
)


def _type_error(name: str, kind: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{name}': expected {kind}.", code="invalid_type", param=name)


def _check_fields(data: dict[str, Any]) -> KeygateError | None:
    """One pass over the top-level keys: policy fields of the right type, and no other key that is
    a policy field in another case."""
    for name, value in data.items():
        kind = FIELD_TYPES.get(name)
        if kind is None:
            if name.casefold() in FIELD_TYPES:
                folded = name.casefold()
                return InvalidRequest(
                    f"The request body gives '{folded}' under another name; write it '{folded}', once.",
                    code="duplicate_field",
                    param=folded,
                )
            continue
        if value is None:
            if name == "stream":
                return _type_error(name, kind)
            continue
        if kind is _COUNT:
            ok = type(value) is int and value > 0
        elif kind is _STRING:
            ok = type(value) is str
        elif kind is _BOOLEAN:
            ok = value is True or value is False
        else:
            ok = type(value) is dict
        if not ok:
            return _type_error(name, kind)
    return None


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def has_duplicate_keys(raw: bytes, canonical: bytes) -> bool:
    """Whether the JSON text ``raw``, whose parse serialised is ``canonical``, gives a key twice
    in some object (see the module docstring for why counting colons tells)."""
    # (memchr for a backslash first: most bodies have none, and the rest rarely an escaped colon)
    if raw.find(b"\\") >= 0 and b"\\u003" in raw and (_COLON_ESCAPES[0] in raw or _COLON_ESCAPES[1] in raw):
        try:
            json.loads(raw, object_pairs_hook=_refuse_duplicates)
        except (ValueError, RecursionError):  # a duplicate, or nothing this check can vouch for
            return True
        return False
    return raw.count(b":") != canonical.count(b":")


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
        if route.body == "multipart" and ctype[:19].lower() != "multipart/form-data":
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
        return await self._read_form(ctx, ctype)

    @staticmethod
    async def _read_form(ctx: Context, ctype: str) -> KeygateError | None:
        body = ctx.body
        try:
            boundary = boundary_of(ctype)
            check_header_lines(body, boundary)  # (C-level searches: linear, a few ms for 25 MiB)
            scanner = FieldScanner(boundary, FORM_FIELDS, len(body))
            if len(body) <= STEP:
                scanner.feed(body)
            else:
                for start in range(0, len(body), STEP):
                    scanner.feed(body[start : start + STEP])
                    await asyncio.sleep(0)  # a large upload never holds up other requests
            fields = scanner.close()
        except FormError as exc:
            return InvalidRequest(exc.message, code="invalid_multipart", param=exc.param)
        ctx.model = fields.get("model")
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
        err = _check_fields(data)
        if err is not None:
            return err
        canonical = orjson.dumps(data)
        if has_duplicate_keys(ctx.body, canonical):
            return _DUPLICATE
        ctx.body = canonical  # forwarded as checked (module docstring)
        ctx.model = data.get("model")
        ctx.json = data
        route = ctx.route
        if route is not None and route.streams and data.get("stream") is True:
            ctx.stream = True
            ask_for_usage(ctx)  # so the stream can be accounted (metering.py)
        return None
