"""The data-plane application: a raw RSGI callable, no framework on the hot path.

For each request: refuse headers that can be read two ways (a repeated Authorization, Host,
Content-Type..., or an API-key header that disagrees with Authorization: ``headers.py``), match the
route allowlist, rewrite the query from the route's own parameters (``routes.canonical_query``), run
the chain's request phase (auth, body, policy, limits...), forward to the upstream
(``forward.py``), relay the answer (whole or streamed, metered by ``metering.py``; a stream no
faster than the client's connection takes it, ``sockets.SendWindow``; upstream 401/403
answers become keygate's own errors), and always run the chain's complete phase so no request
escapes accounting. No answer carries a Server banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any

from . import http1, routes
from .chain import Chain
from .config import Settings
from .context import Context
from .errors import (
    ClientGone,
    InvalidRequest,
    KeygateError,
    NotFound,
    error_body,
    error_headers,
    sse_error_event,
)
from .forward import Answer, Forwarder, scrub, transport_error
from .headers import NO_BANNER, conflicting_key, duplicated, filter_response
from .logs import redact
from .metering import StreamMeter, usage_from_json
from .object_lists import Lister
from .sockets import SendWindow
from .tls import hsts_headers

if TYPE_CHECKING:  # imported by server.py only when tracing is on (the SDK takes ~0.2 s to import)
    from .tracing import Tracing

log = logging.getLogger("keygate")

_NOT_FOUND = NotFound("Not found: this gateway forwards only the OpenAI API routes it allows.")
_INTERNAL = KeygateError("The gateway hit an internal error.")
CLIENT_CLOSED = 499  # nginx's convention for "client closed the request"


def parse_peer(client: str) -> str:
    """The IP part of an RSGI ``scope.client`` ("1.2.3.4:5678" or "[::1]:5678")."""
    host, sep, port = client.rpartition(":")
    if not sep or not port.isdigit():
        return client
    return host[1:-1] if host.startswith("[") else host


class Gateway:
    """The RSGI app. Built by :func:`keygate.server.build` from settings and its parts."""

    def __init__(
        self,
        settings: Settings,
        chain: Chain,
        forwarder: Forwarder,
        tracing: Tracing | None = None,
        lister: Lister | None = None,
    ) -> None:
        self.settings = settings
        self.chain = chain
        self.forwarder = forwarder
        self.tracing = tracing  # None unless the OTEL_* variables turn tracing on
        self.arrivals = 0  # requests taken so far (the metrics' in-flight gauge)
        self.lister = lister  # lists of stored objects: the caller's only (object_lists.py)
        self._ids = itertools.count(1)
        self._id_prefix = "kg-" + os.urandom(4).hex() + "-"
        # On every answer: an empty Server header, so granian adds no banner of its own, and HSTS
        # when serving TLS.
        self._fixed = [NO_BANNER, *hsts_headers(settings.access.tls)]

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        items = scope.headers.items()  # every header line, lower-cased names (HTTP/1.1 only)
        headers = dict(items)  # the last of repeated names: shorter than items when any repeats
        ctx = Context(
            self._id_prefix + str(next(self._ids)),
            scope.method,
            scope.path,
            scope.query_string,
            headers,
            parse_peer(scope.client),
            proto,
        )
        ctx.scope = scope  # a stream's flow control finds the client's connection by its addresses
        self.arrivals += 1
        tracing = self.tracing
        if tracing is not None:
            tracing.start(ctx)
        try:
            if len(headers) != len(items) or "x-api-key" in headers or "api-key" in headers:
                err = _ambiguous(items, headers)
                if err is not None:
                    self._send_error(ctx, err)
                    return
            await self._handle(ctx)
        except ClientGone:
            ctx.status = CLIENT_CLOSED
            ctx.error = KeygateError("client closed the request", code="client_closed")
        except Exception:
            log.exception("unhandled error", extra={"request_id": ctx.request_id})
            if not ctx.status:
                self._send_error(ctx, _INTERNAL)
        finally:
            self.chain.complete(ctx)
            if ctx.span is not None:
                ctx.span.end()

    def _send_error(self, ctx: Context, err: KeygateError) -> None:
        ctx.status = err.status
        ctx.error = err
        headers = error_headers(err)
        extra = ctx.limit_headers
        if extra is not None:
            names, added = extra
            headers = [h for h in headers if h[0] not in names] + added
        headers += [("x-keygate-request-id", ctx.request_id), *self._fixed]
        ctx.proto.response_bytes(err.status, headers, error_body(err))

    async def _handle(self, ctx: Context) -> None:
        route = routes.match(ctx.method, ctx.path)
        if route is None:
            ctx.path = redact(ctx.path[:200])
            return self._send_error(ctx, _NOT_FOUND)
        ctx.route = route
        if ctx.query:
            query = routes.canonical_query(route, ctx.query)
            if not isinstance(query, str):
                return self._send_error(ctx, query)
            ctx.query = query
        err = await self.chain.request(ctx)
        if err is not None:
            return self._send_error(ctx, err)
        if ctx.stream:
            return await self._until_disconnect(ctx, self._streamed(ctx))
        if route.action == "list" and self.lister is not None:
            answer = await self.lister.page(ctx)
        else:
            answer = await self.forwarder.open(ctx)
        ctx.upstream_ended = perf_counter()
        if not isinstance(answer, Answer):
            return self._send_error(ctx, answer)
        try:
            self._reply(ctx, answer)
        finally:
            answer.close()
        return None

    async def _streamed(self, ctx: Context) -> None:
        answer = await self.forwarder.open(ctx)
        if not isinstance(answer, Answer):
            ctx.upstream_ended = perf_counter()
            return self._send_error(ctx, answer)
        try:
            await self._relay(ctx, answer)
        finally:
            answer.close()
        return None

    async def _until_disconnect(self, ctx: Context, exchange: Coroutine[Any, Any, None]) -> None:
        """Run a streamed exchange; a client that disconnects cancels it, which closes the upstream
        connection at once."""
        relay = asyncio.ensure_future(exchange)
        gone = asyncio.ensure_future(ctx.proto.client_disconnect())
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not relay.done():
                relay.cancel()
                ctx.status = CLIENT_CLOSED
                ctx.error = KeygateError("client disconnected mid-stream", code="client_closed")
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            gone.cancel()

    def _reply(self, ctx: Context, answer: Answer) -> None:
        """Answer the client with a whole upstream response."""
        response = answer.response
        status, headers, body = response.status, response.headers, response.body
        self.chain.response_start(ctx, status, headers)
        if answer.refusal is not None:  # an upstream 401/403: keygate's error instead
            return self._send_error(ctx, answer.refusal)
        if status >= 400:
            body = scrub(body, answer.lease.key.secret)
        else:
            route = ctx.route
            if route is not None:
                if route.metered:
                    usage_from_json(body, ctx.usage)
                if route.kind:
                    ctx.answer = body  # ids of what it created (guards/objects.py)
        if ctx.span is not None and status < 400:
            ctx.span.body(body)
        out = self._reply_headers(ctx, answer)
        ctx.status = status
        ctx.proto.response_bytes(status, out, body)
        return None

    def _reply_headers(self, ctx: Context, answer: Answer) -> list[tuple[str, str]]:
        """The upstream's headers that may reach the client (values scrubbed of the key the request
        used), with keygate's own rate-limit counts in place of the upstream's, and keygate's
        request id."""
        upstream, key = answer.response.headers, answer.lease.key.secret.reveal()
        extra = ctx.limit_headers
        if extra is None:
            out = filter_response(upstream, key)
        else:
            out = filter_response(upstream, key, extra[0])
            out += extra[1]
        out += [("x-keygate-request-id", ctx.request_id), *self._fixed]
        return out

    async def _relay(self, ctx: Context, answer: Answer) -> None:
        """Relay a streamed answer chunk by chunk (an error or non-SSE answer as a whole)."""
        response = answer.response
        if answer.refusal is not None:
            return self._reply(ctx, answer)  # nothing of the upstream's body is relayed
        if response.status >= 400 or not (response.header("content-type") or "").startswith(
            "text/event-stream"
        ):
            try:
                response.body = await response.read_all()
            except http1.TransportError as exc:
                assert ctx.upstream is not None
                return self._send_error(ctx, transport_error(exc, ctx.upstream))
            finally:
                ctx.upstream_ended = perf_counter()
            return self._reply(ctx, answer)
        self.chain.response_start(ctx, response.status, response.headers)
        out = self._reply_headers(ctx, answer)
        ctx.status = response.status
        transport = ctx.proto.response_stream(response.status, out)
        return await self._pump(ctx, response, transport)

    async def _pump(self, ctx: Context, reader: http1.Response, transport: Any) -> None:
        """Relay a stream piece by piece; each send waits while the client's connection has not
        taken what came before (``sockets.SendWindow``), so the upstream is read no faster."""
        assert ctx.upstream is not None
        meter = StreamMeter(ctx)
        watch = self.chain.watches_chunks
        window = SendWindow(ctx.scope)
        first = True
        while True:
            try:
                chunk = await reader.read_chunk()
            except http1.TransportError as exc:
                ctx.upstream_ended = perf_counter()
                err = transport_error(exc, ctx.upstream)
                ctx.error = err
                await _send(transport, meter.flush() + sse_error_event(err), window)
                return
            if first and chunk:  # (the metrics' time to first token; the span's response model)
                first = False
                ctx.first_chunk = perf_counter()
                if ctx.span is not None:
                    ctx.span.chunk(chunk)
            if chunk is None:
                ctx.upstream_ended = perf_counter()
                rest = meter.flush()
                if rest:
                    await _send(transport, rest, window)
                return
            data = meter.feed(chunk)
            if watch:
                cut = self.chain.chunk(ctx, data)
                if cut is not None:
                    ctx.error = cut
                    await _send(transport, data + sse_error_event(cut), window)
                    return
            if data:
                await _send(transport, data, window)


def _ambiguous(items: list[tuple[str, str]], headers: dict[str, str]) -> KeygateError | None:
    """The 400 for a request whose headers can be read two ways, or None (called only when a name
    repeats or an API-key header is present: the usual request pays a length comparison and two
    dict lookups for the whole check)."""
    if len(headers) != len(items):
        name = duplicated(items)
        if name is not None:
            return InvalidRequest(
                f"The request carries more than one {name} header.", code="duplicate_header", param=name
            )
    name = conflicting_key(headers)
    if name is not None:
        return InvalidRequest(
            f"The request's {name} header and its Authorization header carry different keys; send one.",
            code="conflicting_credentials",
            param=name,
        )
    return None


async def _send(transport: Any, data: bytes, window: SendWindow) -> None:
    """Hand granian one piece of a stream, once the window allows it. granian's stream transport
    queues without a bound and resolves at once; the window is what keeps a slow client's stream
    from piling up here (a count and a comparison per piece while it is open)."""
    cost = window.cost(len(data))
    window.sent += cost
    if window.sent > window.limit:
        await window.wait(cost)
    try:
        await transport.send_bytes(data)
    except Exception as exc:  # granian raises ProtocolClosed once the client is gone
        raise ClientGone from exc
