"""The data-plane application: a raw RSGI callable, no framework on the hot path.

For each request: match the route allowlist, run the chain's request phase (auth, body, policy,
limits...), forward to the upstream, relay the answer (whole or streamed), and always run the
chain's complete phase so no request escapes accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

from . import routes
from .chain import Chain, Context
from .config import Settings
from .errors import KeygateError, NotFound, error_body, error_headers
from .guards.body import ClientGone
from .guards.headers import filter_request, filter_response, request_allowlist
from .logs import redact
from .streaming import SSETap, sse_error_event
from .tls import hsts_headers
from .upstream import UpstreamClient, map_transport_error, scrub, upstream_key_rejected, usage_from_json
from .upstream_pool import Lease, UpstreamPool

log = logging.getLogger("keygate")

_NOT_FOUND = NotFound("Not found: this gateway forwards only the OpenAI API routes it allows.")
_INTERNAL = KeygateError("The gateway hit an internal error.")
_USAGE_ROUTES = frozenset({"chat.completions", "completions", "embeddings", "responses"})
CLIENT_CLOSED = 499  # nginx's convention for "client closed the request"


def parse_peer(client: str) -> str:
    """The IP part of an RSGI ``scope.client`` ("1.2.3.4:5678" or "[::1]:5678")."""
    host, sep, port = client.rpartition(":")
    if not sep or not port.isdigit():
        return client
    return host[1:-1] if host.startswith("[") else host


class Gateway:
    """The RSGI app. Built by :func:`keygate.server.build_gateway` from settings and a store."""

    def __init__(self, settings: Settings, chain: Chain, client: UpstreamClient, pool: UpstreamPool) -> None:
        self.settings = settings
        self.chain = chain
        self.client = client
        self.pool = pool
        self._allow_headers = request_allowlist(settings.extra_request_headers)
        self._ids = itertools.count(1)
        self._id_prefix = "kg-" + os.urandom(4).hex() + "-"
        self._hsts = hsts_headers(settings.access.tls)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        ctx = Context(
            self._id_prefix + str(next(self._ids)),
            scope.method,
            scope.path,
            scope.query_string,
            dict(scope.headers.items()),  # granian hands over lower-cased names (HTTP/1.1 only)
            parse_peer(scope.client),
            proto,
        )
        try:
            await self._handle(ctx, proto)
        except ClientGone:
            ctx.status = CLIENT_CLOSED
            ctx.error = KeygateError("client closed the request", code="client_closed")
        except Exception:
            log.exception("unhandled error", extra={"request_id": ctx.request_id})
            if not ctx.status:
                self._send_error(ctx, _INTERNAL)
        finally:
            self.chain.complete(ctx)

    def _send_error(self, ctx: Context, err: KeygateError) -> None:
        ctx.status = err.status
        ctx.error = err
        headers = with_extras(ctx, error_headers(err))
        headers += [("x-keygate-request-id", ctx.request_id), *self._hsts]
        ctx.proto.response_bytes(err.status, headers, error_body(err))

    async def _handle(self, ctx: Context, proto: Any) -> None:
        route = routes.match(ctx.method, ctx.path)
        if route is None:
            ctx.path = redact(ctx.path[:200])
            return self._send_error(ctx, _NOT_FOUND)
        ctx.route = route
        err = await self.chain.request(ctx)
        if err is not None:
            return self._send_error(ctx, err)
        assert ctx.key is not None
        base = ctx.upstream or self.pool.upstream_for(ctx.key.upstream)
        if base is None:
            return self._send_error(ctx, _INTERNAL)
        ctx.upstream = base
        # One attempt per key (see upstream_pool.py); retries only before any byte reached the client.
        tried: set[str] = set()
        while True:
            lease = self.pool.acquire(base.name, tried)
            if lease is None:
                return self._send_error(ctx, self.pool.unavailable(base.name))
            ctx.upstream = lease.upstream
            try:
                done = await self._attempt(ctx, route.upstream_path, lease, tried, base.name)
            finally:
                lease.release()
            if done:
                return None

    async def _attempt(self, ctx: Context, path: str, lease: Lease, tried: set[str], base_name: str) -> bool:
        """Forward once on the leased key; False means "retry on another key"."""
        headers = filter_request(ctx.headers.items(), self._allow_headers, lease.key.secret.reveal())
        request = self.client.request(lease.upstream, ctx.method, path, ctx.query, headers)
        if ctx.body:
            request = request.body_bytes(ctx.body)

        def retry() -> bool:
            return self.pool.can_retry(base_name, tried)

        if ctx.stream:
            return await self._forward_stream(ctx, request, lease, retry)
        return await self._forward(ctx, request.timeout(self.client.timeout), lease, retry)

    @staticmethod
    def _retriable(lease: Lease, status: int, response: Any) -> bool:
        if status < 400:
            lease.ok()
            return False
        if status in (401, 403):
            lease.rejected(status)
            return True
        if status == 429:
            lease.cooldown(response.headers.get("retry-after"))
            return True
        if status >= 500:
            return True
        lease.ok()
        return False

    async def _forward(self, ctx: Context, request: Any, lease: Lease, retry: Callable[[], bool]) -> bool:
        assert ctx.upstream is not None
        try:
            response = await request.build().send()
            status = response.status
            body = bytes(await response.bytes())
        except Exception as exc:
            err = map_transport_error(exc, ctx.upstream)
            if retry():
                return False
            self._send_error(ctx, err)
            return True
        headers = list(response.headers.items())
        if self._retriable(lease, status, response) and retry():
            return False
        self.chain.response_start(ctx, status, headers)
        if status in (401, 403):
            self._send_error(ctx, upstream_key_rejected(ctx.upstream, status))
            return True
        if status >= 400:
            body = scrub(body, lease.key.secret)
        elif ctx.route is not None and ctx.route.name in _USAGE_ROUTES:
            usage_from_json(body, ctx.usage)
        out = with_extras(ctx, filter_response(headers))
        out += [("x-keygate-request-id", ctx.request_id), *self._hsts]
        ctx.status = status
        ctx.proto.response_bytes(status, out, body)
        return True

    async def _forward_stream(
        self, ctx: Context, request: Any, lease: Lease, retry: Callable[[], bool]
    ) -> bool:
        """Relay a streamed response; a client disconnect closes the upstream request at once."""
        relay = asyncio.ensure_future(self._relay(ctx, request, lease, retry))
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
        return True if relay.cancelled() else relay.result()

    async def _relay(self, ctx: Context, request: Any, lease: Lease, retry: Callable[[], bool]) -> bool:
        assert ctx.upstream is not None
        try:
            # A zero read-ahead buffer: the response (and each chunk) is handed over as soon as it
            # arrives, instead of after 64 KiB or the end of the stream.
            async with request.streamed_read_buffer_limit(0).build_streamed() as response:
                status = response.status
                headers = list(response.headers.items())
                if self._retriable(lease, status, response) and retry():
                    return False
                self.chain.response_start(ctx, status, headers)
                if status in (401, 403):
                    self._send_error(ctx, upstream_key_rejected(ctx.upstream, status))
                    return True
                ctype = response.headers.get("content-type") or ""
                if status >= 400 or not ctype.startswith("text/event-stream"):
                    body = bytes(await response.bytes())
                    out = with_extras(ctx, filter_response(headers))
                    out += [("x-keygate-request-id", ctx.request_id), *self._hsts]
                    ctx.status = status
                    ctx.proto.response_bytes(
                        status, out, scrub(body, lease.key.secret) if status >= 400 else body
                    )
                    return True
                out = with_extras(ctx, filter_response(headers))
                out += [("x-keygate-request-id", ctx.request_id), *self._hsts]
                ctx.status = status
                transport = ctx.proto.response_stream(status, out)
                await self._pump(ctx, response.body_reader, transport)
        except (asyncio.CancelledError, ClientGone):
            raise
        except Exception as exc:
            if not ctx.status:
                err = map_transport_error(exc, ctx.upstream)
                if retry():
                    return False
                self._send_error(ctx, err)
                return True
            raise
        return True

    async def _pump(self, ctx: Context, reader: Any, transport: Any) -> None:
        assert ctx.upstream is not None
        tap = SSETap(ctx)
        watch = self.chain.watches_chunks
        while True:
            try:
                chunk = await reader.read_chunk()
            except Exception as exc:
                err = map_transport_error(exc, ctx.upstream)
                ctx.error = err
                await _send(transport, tap.flush() + sse_error_event(err))
                return
            if chunk is None:
                rest = tap.flush()
                if rest:
                    await _send(transport, rest)
                return
            data = tap.feed(bytes(chunk))
            if watch:
                cut = self.chain.chunk(ctx, data)
                if cut is not None:
                    ctx.error = cut
                    await _send(transport, data + sse_error_event(cut))
                    return
            if data:
                await _send(transport, data)


def with_extras(ctx: Context, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Add the headers guards left in ``ctx.extras["headers"]`` (e.g. keygate's own rate-limit
    counts), replacing upstream headers of the same name."""
    extra: list[tuple[str, str]] | None = ctx.extras.get("headers")
    if not extra:
        return headers
    names = {name for name, _ in extra}
    return [h for h in headers if h[0].lower() not in names] + extra


async def _send(transport: Any, data: bytes) -> None:
    try:
        await transport.send_bytes(data)
    except Exception as exc:  # granian raises ProtocolClosed once the client is gone
        raise ClientGone from exc
