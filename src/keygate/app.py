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
from collections.abc import Coroutine
from typing import Any

from . import http1, routes
from .chain import Chain
from .config import Settings
from .context import Context
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
        if ctx.stream:
            return await self._until_disconnect(ctx, self._exchange(ctx, path, lease, tried, base_name))
        return await self._exchange(ctx, path, lease, tried, base_name)

    async def _until_disconnect(self, ctx: Context, exchange: Coroutine[Any, Any, bool]) -> bool:
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
        return True if relay.cancelled() else relay.result()

    async def _exchange(self, ctx: Context, path: str, lease: Lease, tried: set[str], base_name: str) -> bool:
        assert ctx.upstream is not None
        headers = filter_request(ctx.headers.items(), self._allow_headers, lease.key.secret.reveal())
        try:
            response = await self.client.send(
                ctx.upstream, ctx.method, path, ctx.query, headers, ctx.body, ctx.stream
            )
        except Exception as exc:
            err = map_transport_error(exc, ctx.upstream)
            if err.status >= 500 and self.pool.can_retry(base_name, tried):
                return False
            self._send_error(ctx, err)
            return True
        status = response.status
        if self._retriable(lease, status, response) and self.pool.can_retry(base_name, tried):
            if ctx.stream:
                response.close()
            return False
        if ctx.stream:
            try:
                await self._relay(ctx, response, lease)
            finally:
                response.close()
        else:
            self._reply(ctx, response, lease)
        return True

    @staticmethod
    def _retriable(lease: Lease, status: int, response: http1.Response) -> bool:
        if status < 400:
            lease.ok()
            return False
        if status in (401, 403):
            lease.rejected(status)
            return True
        if status == 429:
            lease.cooldown(response.header("retry-after"))
            return True
        if status >= 500:
            return True
        lease.ok()
        return False

    def _reply(self, ctx: Context, response: http1.Response, lease: Lease) -> None:
        """Answer the client with a whole upstream response."""
        assert ctx.upstream is not None
        status, headers, body = response.status, response.headers, response.body
        self.chain.response_start(ctx, status, headers)
        if status in (401, 403):
            return self._send_error(ctx, upstream_key_rejected(ctx.upstream, status))
        if status >= 400:
            body = scrub(body, lease.key.secret)
        elif ctx.route is not None and ctx.route.name in _USAGE_ROUTES:
            usage_from_json(body, ctx.usage)
        out = reply_headers(ctx, headers)
        out += [("x-keygate-request-id", ctx.request_id), *self._hsts]
        ctx.status = status
        ctx.proto.response_bytes(status, out, body)
        return None

    async def _relay(self, ctx: Context, response: http1.Response, lease: Lease) -> None:
        """Relay a streamed response chunk by chunk (an error or non-SSE answer as a whole)."""
        if response.status >= 400 or not (response.header("content-type") or "").startswith(
            "text/event-stream"
        ):
            try:
                response.body = await response.read_all()
            except Exception as exc:
                assert ctx.upstream is not None
                return self._send_error(ctx, map_transport_error(exc, ctx.upstream))
            return self._reply(ctx, response, lease)
        self.chain.response_start(ctx, response.status, response.headers)
        out = reply_headers(ctx, response.headers)
        out += [("x-keygate-request-id", ctx.request_id), *self._hsts]
        ctx.status = response.status
        transport = ctx.proto.response_stream(response.status, out)
        return await self._pump(ctx, response, transport)

    async def _pump(self, ctx: Context, reader: http1.Response, transport: Any) -> None:
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
            data = tap.feed(chunk)
            if watch:
                cut = self.chain.chunk(ctx, data)
                if cut is not None:
                    ctx.error = cut
                    await _send(transport, data + sse_error_event(cut))
                    return
            if data:
                await _send(transport, data)


def reply_headers(ctx: Context, upstream: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's headers that may reach the client, with the ones guards left in
    ``ctx.extras["headers"]`` (keygate's own rate-limit counts) in place of those they name."""
    extra: tuple[frozenset[str], list[tuple[str, str]]] | None = ctx.extras.get("headers")
    if extra is None:
        return filter_response(upstream)
    out = filter_response(upstream, extra[0])
    out += extra[1]
    return out


def with_extras(ctx: Context, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Add the headers guards left in ``ctx.extras["headers"]`` to keygate's own ``headers`` (an
    error answer), replacing those of the same (lower-case) names."""
    extra: tuple[frozenset[str], list[tuple[str, str]]] | None = ctx.extras.get("headers")
    if extra is None:
        return headers
    names, added = extra
    return [h for h in headers if h[0] not in names] + added


async def _send(transport: Any, data: bytes) -> None:
    try:
        await transport.send_bytes(data)
    except Exception as exc:  # granian raises ProtocolClosed once the client is gone
        raise ClientGone from exc
