"""Fuzz targets: each takes one input of bytes, drives one parser of keygate with it, and checks
the parser's invariants, raising :class:`Broken` (or whatever escaped the parser) when one fails.

The same functions serve three drivers:

- ``python3 -m tests.fuzz.run TARGET`` (atheris, coverage-guided, libFuzzer; ``scripts/fuzz.sh``
  runs every target for a bounded time);
- ``tests/fuzz/test_targets.py``, which replays every seed and every input that once broke a
  target (``tests/fuzz/corpus/TARGET/``), so a crash found becomes a regression test;
- the same test file's Hypothesis properties, where atheris is not installed.

Invariants, per target:

- ``body``: the body guard (``guards.body.BodyReader``) on JSON and multipart bodies returns None
  or a ``KeygateError``, nothing else; a JSON body it accepts is forwarded as JSON that parses to
  what it checked, and the standard library's decoder, asked to refuse duplicate keys, reads the
  client's bytes to the same object (so no duplicate key and no case variant of a policy field
  slipped through).
- ``multipart``: ``multipart.parse_fields`` raises nothing but ``FormError``; the standard
  library's MIME parser reads the same ``model`` from what it accepts, or none (but see
  ``_stdlib_models``' caller on line breaks); a body written from parts (``_form``) parses back
  to its ``model`` field, in any chunking.
- ``routes``: ``routes.match`` never raises and never matches a path holding ``..``, ``%``, ``//``
  or a character outside the identifier set; ``canonical_query`` returns a string or an
  ``InvalidRequest``, and its string is its own canonical form.
- ``http1``: the upstream client's response parser (``http1.Connection``, fed as the socket
  would) ends in a response or a ``TransportError``; a response written from parts (status,
  headers, a body sent whole or chunked) is read back as written, in any split into packets.
- ``metering``: ``usage_from_json`` and ``StreamMeter`` never raise; counts are whole numbers;
  a stream without usage passes through byte for byte, in any chunking.
- ``policy``: the check of operator policy JSON (``ops.policy.validate_policy``, behind the admin
  API and the CLI) refuses only with a 400 naming ``policy``; what it accepts is finite, plain
  JSON that checks as itself once stored (the CLI re-checks a stored policy on every update), with
  no control character in a list entry; ``check_name`` passes no control character.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import itertools
import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from keygate import http1, metering, multipart, routes
from keygate.context import Context
from keygate.errors import InvalidRequest, KeygateError
from keygate.guards.body import FIELD_TYPES, BodyReader
from keygate.ops.policy import validate_policy
from keygate.ops.validate import check_name, has_control
from keygate.types import Usage


class Broken(AssertionError):
    """An invariant of a target failed."""


def check(ok: object, what: str) -> None:
    if not ok:
        raise Broken(what)


class Input:
    """Reads an input as a sequence of choices (a small FuzzedDataProvider that needs no atheris)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def chunk(self) -> bytes:
        """Up to 255 bytes, its length given by the byte before."""
        return self.take(self.byte())

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def cuts(self, size: int) -> list[int]:
        """Up to 8 points at which to split something of ``size`` bytes."""
        if size == 0:
            return []
        return sorted({(self.byte() * 256 + self.byte()) % size for _ in range(self.byte() % 9)})


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


_LOOP = asyncio.new_event_loop()


class _Body:
    """The RSGI protocol object as the body guard reads it: ``await proto()`` gives the body."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __call__(self) -> bytes:
        return self._body


def context(path: str, body: bytes, ctype: str = "application/json") -> Context:
    """A request as the app hands it to the chain (keygate.testing.guards.context, without the
    import of the whole test kit, which the fuzzer would instrument and start slower)."""
    headers = {"content-type": ctype, "content-length": str(len(body))}
    ctx = Context("fuzz", "POST", path, "", headers, "127.0.0.1", _Body(body))
    ctx.route = routes.match("POST", path)
    return ctx


def run(coro: Any) -> Any:
    return _LOOP.run_until_complete(coro)


# -- body: the JSON and multipart body guard ----------------------------------------------------

_GUARD = BodyReader(max_bytes=1 << 20)
_JSON_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")
_FORM_PATHS = ("/v1/audio/transcriptions", "/v1/images/edits")


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    check(len(out) == len(pairs), "a duplicate key was accepted")
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (a float NaN is never equal to itself, so compare serialised)."""
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


def body(data: bytes) -> None:
    src = Input(data)
    mode = src.byte()
    if mode & 1:
        path = _FORM_PATHS[mode >> 1 & 1]
        ctype = "multipart/form-data; boundary=" + (src.chunk().decode("latin-1") or "b")
        raw = src.rest()
    else:
        path = _JSON_PATHS[mode >> 1 & 3]
        ctype = "application/json"
        raw = src.rest()
    ctx = context(path, raw, ctype)
    err = run(_GUARD.request(ctx))
    check(err is None or isinstance(err, KeygateError), f"returned {err!r}")
    if err is not None or mode & 1:
        if err is None:
            check(ctx.model is None or isinstance(ctx.model, str), "model is not text")
        return
    _accepted_json(raw, ctx)


def _accepted_json(raw: bytes, ctx: Context) -> None:
    check(isinstance(ctx.json, dict), "no JSON object after acceptance")
    assert ctx.json is not None
    check(_same(orjson.loads(ctx.upstream_body()), ctx.json), "the forwarded body is not what was checked")
    try:
        stdlib = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except Broken:
        raise
    except (ValueError, RecursionError):
        return  # text orjson reads and the standard library does not (deep nesting...)
    check(_same(stdlib, orjson.loads(raw)), "the standard library reads the accepted body differently")
    for name, value in ctx.json.items():
        folded = name.casefold()
        check(folded not in FIELD_TYPES or folded == name, f"a case variant of {folded!r} passed")
        if name == "model":
            check(value is None or isinstance(value, str), "model is not text")
        if name == "stream":
            check(isinstance(value, bool), "stream is not a boolean")
    model = ctx.json.get("model")
    check(ctx.model == model, "ctx.model is not the body's model")


# -- multipart: the form parser on its own ------------------------------------------------------


def _form(boundary: bytes, parts: list[tuple[bytes, bytes]]) -> bytes:
    head = b'\r\nContent-Disposition: form-data; name="'
    out = b"".join(b"--" + boundary + head + name + b'"\r\n\r\n' + value + b"\r\n" for name, value in parts)
    return out + b"--" + boundary + b"--\r\n"


_TOKEN = re.compile(rb"[A-Za-z0-9_]{1,20}")


def _stdlib_models(raw: bytes, ctype: str) -> list[str | None]:
    """The ``model`` values the standard library's MIME parser finds in a body (a second reader,
    as an upstream might be): keygate must not accept a body that reader takes another model from."""
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw
        )
        if not message.is_multipart():
            return []
        found: list[str | None] = []
        for part in message.iter_parts():
            if str(part.get_param("name", header="content-disposition")).strip().lower() == "model":
                payload = part.get_payload(decode=True)
                found.append(payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None)
        return found
    except Exception:  # what the standard library cannot read, it cannot misread either
        return []


def multipart_parser(data: bytes) -> None:
    src = Input(data)
    mode = src.byte()
    if mode & 1:  # arbitrary bytes under a content type from the input
        ctype = src.chunk().decode("latin-1")
        raw = src.rest()
        try:
            fields = multipart.parse_fields(raw, ctype)
        except multipart.FormError:
            return
        check(set(fields) <= {"model"} and all(isinstance(v, str) for v in fields.values()), "bad fields")
        others = _stdlib_models(raw, ctype)
        model = fields.get("model")
        # Known: the email parser also ends a part at a bare LF before the boundary, where keygate
        # (like RFC 2046) needs CRLF, so a value with a line break in it reads differently there.
        if model is None or ("\n" not in model and "\r" not in model):
            check(others in ([], [model]), f"the email parser reads model {others!r}, not {model!r}")
        return
    # A well-formed body with one model part among others parses back to that model.
    boundary = b"kg" + bytes(c for c in src.chunk() if chr(c).isascii() and chr(c).isalnum())[:60]
    model = bytes(c for c in src.chunk() if 0x21 <= c < 0x7F)[:100]
    parts: list[tuple[bytes, bytes]] = []
    for _ in range(src.byte() % 5):
        name = src.chunk()
        if _TOKEN.fullmatch(name) and name.lower().strip() != b"model":
            parts.append((name, src.chunk().replace(b"\r", b"").replace(b"\n", b"").replace(b"-", b"")))
    parts.insert(src.byte() % (len(parts) + 1), (b"model", model))
    raw = _form(boundary, parts)
    ctype = "multipart/form-data; boundary=" + boundary.decode()
    scanner = multipart.FieldScanner(multipart.boundary_of(ctype), ("model",), len(raw))
    for piece in split(raw, src.cuts(len(raw))):
        scanner.feed(piece)
    check(scanner.close() == {"model": model.decode()}, "a written model did not parse back")


# -- routes: the allowlist matcher and the query filter -----------------------------------------

_METHODS = ("GET", "POST", "DELETE", "PUT", "PATCH", "get")
_PATH_CHARS = re.compile(r"[A-Za-z0-9._:/-]*")


def routes_matcher(data: bytes) -> None:
    src = Input(data)
    method = _METHODS[src.byte() % len(_METHODS)]
    path = src.chunk().decode("utf-8", "replace")
    if src.byte() & 1:  # grow a path the matcher knows, so matches are reached
        path = ("/v1/responses/", "/v1/models/", "/v1/")[src.byte() % 3] + path
    query = src.rest().decode("utf-8", "replace")
    route = routes.match(method, path)
    if route is None:
        return
    check(".." not in path and "%" not in path and "//" not in path, f"matched {path!r}")
    check(_PATH_CHARS.fullmatch(path) is not None, f"matched a path with other characters: {path!r}")
    check(route.method == method and route.upstream_path == path[len("/v1") :], "route facts differ")
    canonical = routes.canonical_query(route, query)
    check(isinstance(canonical, str | InvalidRequest), f"canonical_query gave {canonical!r}")
    if isinstance(canonical, str):
        check(routes.canonical_query(route, canonical) == canonical, "the canonical query is not stable")


# -- http1: the upstream response parser --------------------------------------------------------


class _Transport:
    """Stands in for the socket's transport: takes writes, and records pause/abort."""

    def __init__(self) -> None:
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_ORIGIN = http1.Origin("http://127.0.0.1:9")


async def _exchange(packets: list[bytes], streaming: bool) -> tuple[int, dict[str, str], bytes]:
    conn = http1.Connection(_ORIGIN)
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    waiter = conn.start(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"", streaming, timeout=60.0)
    for packet in packets:
        conn.data_received(packet)
    conn.connection_lost(None)  # the input ends: so does the connection
    response: http1.Response = await waiter
    if streaming:
        body = await response.read_all()
    else:
        body = response.body
    return response.status, dict(response.headers), body


def http1_response(data: bytes) -> None:
    src = Input(data)
    mode = src.byte()
    if mode & 1:  # arbitrary bytes from the upstream
        raw = src.rest()
        try:
            status, _, _ = run(_exchange(split(raw, src.cuts(len(raw))), bool(mode & 2)))
        except http1.TransportError:
            return
        check(200 <= status <= 999, f"status {status}")
        return
    # A response written from parts is read back as written.
    status = 200 + (src.byte() * 256 + src.byte()) % 400
    headers = {}
    for _ in range(src.byte() % 4):
        name = bytes(c for c in src.chunk() if chr(c).isascii() and chr(c).isalnum()).decode().lower()[:30]
        value = bytes(c for c in src.chunk() if 0x20 <= c < 0x7F).decode().strip()
        if name and name not in ("content-length", "transfer-encoding", "connection"):
            headers["x-" + name] = value
    content = src.take(src.byte() * 8) if status not in (204, 304) else b""  # (these have no body)
    chunked = bool(mode & 2) and status not in (204, 304)
    head = f"HTTP/1.1 {status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if chunked:
        sizes = src.cuts(len(content))
        pieces = split(content, sizes)
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        raw = (head + "transfer-encoding: chunked\r\n\r\n").encode() + framed
    else:
        raw = (head + f"content-length: {len(content)}\r\n\r\n").encode() + content
    got = run(_exchange(split(raw, src.cuts(len(raw))), bool(mode & 4)))
    expected_headers = {
        **headers,
        **({"transfer-encoding": "chunked"} if chunked else {"content-length": str(len(content))}),
    }
    check(got == (status, expected_headers, content), "a written response was not read back")


# -- metering: usage from answers and streams ---------------------------------------------------

_STREAM_PATHS = ("/v1/chat/completions", "/v1/responses", "/v1/completions")


def _counts_ok(usage: Usage) -> None:
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "streamed"):
        value = getattr(usage, name)
        check(type(value) is int, f"usage.{name} is {value!r}")


def metering_usage(data: bytes) -> None:
    src = Input(data)
    mode = src.byte()
    if mode & 1:
        usage = Usage()
        metering.usage_from_json(src.rest(), usage)
        _counts_ok(usage)
        return
    ctx = context(_STREAM_PATHS[(mode >> 1 & 3) % 3], b"{}")
    ctx.client_wants_usage = bool(mode & 8)
    meter = metering.StreamMeter(ctx)
    stream = src.rest()
    out = b"".join(meter.feed(p) for p in split(stream, src.cuts(len(stream)))) + meter.flush()
    _counts_ok(ctx.usage)
    check(ctx.usage.streamed >= 0, "a negative stream count")
    if b'"usage"' not in stream:
        check(out == stream, "a stream without usage was changed")


# -- policy: the admin API's and CLI's checks of operator input ---------------------------------


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON (as the admin API reads bodies)


def policy(data: bytes) -> None:
    try:
        value = json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return
    try:
        checked = validate_policy(value)
    except InvalidRequest as exc:
        check(exc.param == "policy" and exc.status == 400, f"refused as {exc.param!r} {exc.status}")
        return
    stored = json.dumps(checked, allow_nan=False)  # what the store writes: finite, plain JSON
    check(validate_policy(json.loads(stored)) == checked, "a stored policy does not check as itself")
    for name in ("models", "routes", "allow_ips"):
        check(not any(has_control(v) for v in checked.get(name, ())), f"a control character in {name}")
    if isinstance(value, dict):
        for name in ("name", "description"):
            text = value.get(name)
            try:
                check_name(text)
            except InvalidRequest:
                continue
            check(isinstance(text, str) and not has_control(text), f"check_name passed {text!r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "body": body,
    "multipart": multipart_parser,
    "routes": routes_matcher,
    "http1": http1_response,
    "metering": metering_usage,
    "policy": policy,
}
