"""Forwarding: one request to the upstream, over as many key attempts as it takes.

:meth:`Forwarder.open` leases a key from the pool (``upstream_pool.py``), sends the request, and
classifies the answer:

- below 400, or a 4xx other than 401/403/429: the answer goes to the client;
- 401/403: the key was rejected; it leaves the rotation and the request is tried on another key;
- 429: the key cools down for its Retry-After, and the request is tried on another key;
- 5xx, or a failed or timed-out connection: tried on another key;

at most ``upstream_retries`` more times, and only while another key is available; the last answer
goes to the client as it is. Nothing is retried once any byte of an answer reached the client (the
caller relays only what ``open`` returned).

The URL of every upstream request is the configured base URL plus the allowlisted route's path;
nothing the client sends (body, header, query) can change the host. Transport failures become
client-facing errors at one boundary, :func:`transport_error`: refused or failed connections are
502, timeouts 504, a request that cannot be written 400; the detail goes to the operator log.
"""

from __future__ import annotations

import logging

from . import http1
from .config import Settings, Upstream
from .context import Context
from .errors import InvalidRequest, KeygateError, UpstreamError, UpstreamTimeout
from .headers import filter_request, request_allowlist
from .types import Secret
from .upstream_pool import Lease, UpstreamPool

log = logging.getLogger("keygate.upstream")

NO_UPSTREAM = KeygateError("The key's upstream is not configured on this gateway.", code="no_upstream")
REJECTED_KEY = UpstreamError(
    "The gateway's upstream credentials were rejected. The operator has been notified.",
    code="upstream_auth_failed",
)


def transport_error(exc: http1.TransportError, upstream: Upstream) -> KeygateError:
    """The error the client gets for a failure of the upstream connection (the one place that
    maps them; callers catch ``http1.TransportError`` around each upstream read or write, which
    costs nothing while nothing fails)."""
    if isinstance(exc, http1.InvalidRequest):
        return InvalidRequest(f"The request could not be forwarded: {exc}.", code="invalid_request_header")
    log.warning(
        "upstream request failed",
        extra={"upstream": upstream.name, "error": type(exc).__name__, "detail": str(exc)},
    )
    if isinstance(exc, http1.ConnectTimeout):
        return UpstreamTimeout("Timed out connecting to the upstream API.", code="upstream_connect_timeout")
    if isinstance(exc, http1.ResponseTimeout):
        return UpstreamTimeout("The upstream API did not answer in time.")
    if isinstance(exc, http1.ConnectFailed):
        return UpstreamError("Could not connect to the upstream API.", code="upstream_connect_failed")
    return UpstreamError("The connection to the upstream API failed.", code="upstream_connection_error")


def upstream_key_rejected(upstream: Upstream, status: int) -> KeygateError:
    """An upstream 401/403: its body may echo our key, so it is never passed through."""
    log.error(
        "upstream rejected the gateway's API key; check or rotate it",
        extra={"upstream": upstream.name, "upstream_status": status},
    )
    return REJECTED_KEY


def scrub(body: bytes, key: Secret) -> bytes:
    """Remove the upstream key that was used from an upstream error body before it reaches a client."""
    secret = key.reveal().encode()
    if secret and secret in body:
        body = body.replace(secret, b"[redacted]")
    return body


class Answer:
    """The upstream's answer to the last attempt, with the key lease it was made on.

    A streamed answer's body is still to be read; :meth:`close` releases the lease (and the
    connection, back to its pool if the body was read to the end).
    """

    __slots__ = ("lease", "response", "streamed")

    def __init__(self, response: http1.Response, lease: Lease, streamed: bool) -> None:
        self.response = response
        self.lease = lease
        self.streamed = streamed

    def close(self) -> None:
        if self.streamed:
            self.response.close()
        self.lease.release()


class Forwarder:
    """Sends requests to their upstream, retrying on other keys as the pool allows."""

    def __init__(self, settings: Settings, pool: UpstreamPool) -> None:
        self.pool = pool
        self._http = http1.Client(settings.connect_timeout, settings.upstream_timeout)
        self._allow_headers = request_allowlist(settings.extra_request_headers)

    async def open(self, ctx: Context) -> Answer | KeygateError:
        """The answer that should reach the client, or the error to answer with instead."""
        route = ctx.route
        assert ctx.key is not None and route is not None
        base = ctx.upstream or self.pool.upstream_for(ctx.key.upstream)
        if base is None:
            return NO_UPSTREAM
        ctx.upstream = base
        tried: set[str] = set()
        while True:
            lease = self.pool.acquire(base.name, tried)
            if lease is None:
                return self.pool.unavailable(base.name)
            ctx.upstream = upstream = lease.upstream
            try:
                origin = self._http.origin(upstream.base_url, upstream.ca_bundle)
                target = origin.path + route.upstream_path
                if ctx.query:
                    target += "?" + ctx.query
                headers = filter_request(ctx.headers.items(), self._allow_headers, lease.key.secret.reveal())
                response = await self._http.request(origin, ctx.method, target, headers, ctx.body, ctx.stream)
            except http1.TransportError as exc:
                lease.release()
                err = transport_error(exc, upstream)
                if err.status >= 500 and self.pool.can_retry(base.name, tried):
                    continue
                return err
            except BaseException:
                lease.release()  # cancelled (the client went away), or a bug: never keep the lease
                raise
            if _retry(lease, response) and self.pool.can_retry(base.name, tried):
                if ctx.stream:
                    response.close()
                lease.release()
                continue
            return Answer(response, lease, ctx.stream)

    def close(self) -> None:
        self._http.close()


def _retry(lease: Lease, response: http1.Response) -> bool:
    """Report the answer's status to the key's lease; True when another key should be tried."""
    status = response.status
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
