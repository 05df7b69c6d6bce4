"""Forwarding: one request to the upstream, over as many key attempts as it takes.

:meth:`Forwarder.open` leases a key from the pool (``upstream_pool.py``), sends the request, and
classifies the answer:

- below 400, or a 4xx other than 401/403/429: the answer goes to the client;
- 401, or a 403 whose error says the key itself is no good (:data:`KEY_REFUSED_CODES`,
  :data:`KEY_REFUSED_TYPES`): the key leaves the rotation and the request is tried on another key;
- any other 403 (a model the upstream project may not use, a region the upstream does not serve, a
  key scope the operation needs, or a body keygate cannot read: a firewall in front of the upstream,
  say): the upstream refused *this request*. It is not retried, on another key or on a fallback, and
  the key stays in rotation; the client gets a 403 in OpenAI's shape with keygate's own message and
  the upstream's error code (:func:`refused_request`), never the upstream's text;
- 429: the key cools down for its Retry-After, and the request is tried on another key;
- 5xx, or a failed or timed-out connection: tried on another key;

at most ``upstream_retries`` more times, and only while another key is available; the last answer
goes to the client as it is, except that a 401 or key-refusing 403 becomes keygate's 502
(:func:`upstream_key_rejected`: its body may echo the key). Nothing is retried once any byte of an
answer reached the client (the caller relays only what ``open`` returned).

The URL of every upstream request is the configured base URL plus the allowlisted route's path and
the query keygate wrote from the route's own parameters (``routes.canonical_query``, which the app
applies before the chain runs); nothing the client sends (body, header, query) can change the host.
Transport failures become client-facing errors at one boundary, :func:`transport_error`: refused or
failed connections are 502, timeouts 504, a request that cannot be written 400; the detail goes to
the operator log.
"""

from __future__ import annotations

import logging
import re
from time import perf_counter
from typing import Final

import orjson

from . import http1
from .config import Settings, Upstream
from .context import Context
from .errors import InvalidRequest, KeygateError, PermissionDenied, UpstreamError, UpstreamTimeout
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
    """An upstream 401, or a 403 refusing the key, on the last attempt: its body may echo our key,
    so it is never passed through."""
    log.error(
        "upstream rejected the gateway's API key; check or rotate it",
        extra={"upstream": upstream.name, "upstream_status": status},
    )
    return REJECTED_KEY


# An upstream 403 whose error carries one of these codes (or types) refuses the key itself: it
# leaves the rotation like a 401. OpenAI sends them with 401 as a rule ("Incorrect API key
# provided", a deactivated account, a user no longer in an organisation, access terminated for a
# policy violation); a 403 that says the same is treated the same. Every other 403 refuses only
# the request that got it.
KEY_REFUSED_CODES: Final = frozenset({"invalid_api_key", "account_deactivated", "no_organization"})
KEY_REFUSED_TYPES: Final = frozenset({"access_terminated"})

# What the client is told for the upstream 403s that are common and known; the upstream's own text
# is never relayed (it can name the upstream project or echo the key in part).
_REFUSED_MESSAGES: Final = {
    "model_not_found": "The gateway's upstream project may not use this model.",
    "unsupported_country_region_territory": "The upstream API does not serve the region the gateway runs in.",
    "insufficient_permissions": "The gateway's upstream key is not permitted this operation.",
}
_CODE = re.compile(r"[a-z0-9_]{1,64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
UNREADABLE = "upstream_forbidden"


def refused_request(response: http1.Response) -> KeygateError | None:
    """For an upstream 403 (body read): None when its error refuses the key itself, else the 403
    the client gets for the request.

    A body that is not OpenAI's error JSON (an HTML page from a firewall or CDN in front of the
    upstream, say) refuses the request, not the key: such a page is not about the key, a client can
    provoke one with what it sends, and taking keys out on it would let one client empty the pool.
    """
    code = kind = None
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code, kind = error.get("code"), error.get("type")
        if code in KEY_REFUSED_CODES or kind in KEY_REFUSED_TYPES:
            return None
    if isinstance(code, str) and _CODE.fullmatch(code):
        message = _REFUSED_MESSAGES.get(code, "The upstream API refused this request.")
        message = f"{message} (upstream error code: {code})"
    else:
        code, message = UNREADABLE, "The upstream API refused this request."
    request_id = response.header("x-request-id")
    headers = [("x-request-id", request_id)] if request_id and _REQUEST_ID.fullmatch(request_id) else []
    return PermissionDenied(message, code=code, headers=headers)


def scrub(body: bytes, key: Secret) -> bytes:
    """Remove the upstream key that was used from an upstream error body before it reaches a client."""
    secret = key.reveal().encode()
    if secret and secret in body:
        body = body.replace(secret, b"[redacted]")
    return body


class Answer:
    """The upstream's answer to the last attempt, with the key lease it was made on.

    ``refusal`` is set when the client must get that error instead of the upstream's answer (an
    upstream 401 or 403). A streamed answer's body is still to be read (a 403's is read already);
    :meth:`close` releases the lease (and the connection, back to its pool if the body was read to
    the end).
    """

    __slots__ = ("lease", "refusal", "response", "streamed")

    def __init__(
        self, response: http1.Response, lease: Lease, streamed: bool, refusal: KeygateError | None = None
    ) -> None:
        self.response = response
        self.lease = lease
        self.streamed = streamed
        self.refusal = refusal

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
        span = ctx.span  # tracing.RequestSpan: a child span per attempt (None: tracing is off)
        ctx.upstream_started = perf_counter()
        while True:
            lease = self.pool.acquire(base.name, tried)
            if lease is None:
                return self.pool.unavailable(base.name)
            ctx.upstream = upstream = lease.upstream
            response: http1.Response | None = None
            try:
                origin = self._http.origin(upstream.base_url, upstream.ca_bundle)
                target = origin.path + route.upstream_path
                if ctx.query:
                    target += "?" + ctx.query  # written by keygate: routes.canonical_query
                headers = filter_request(ctx.headers.items(), self._allow_headers, lease.key.secret.reveal())
                if span is not None:
                    span.attempt(upstream, lease.key.id, ctx.method, target)
                response = await self._http.request(
                    origin, ctx.method, target, headers, ctx.upstream_body(), ctx.stream
                )
                if response.status == 403 and ctx.stream:
                    response.body = await response.read_all()  # what it says decides what happens
            except http1.TransportError as exc:
                if span is not None:
                    span.failed(type(exc).__name__)
                if response is not None and ctx.stream:  # reading a streamed 403's body failed
                    response.close()
                lease.release()
                err = transport_error(exc, upstream)
                if err.status >= 500 and self.pool.can_retry(base.name, tried):
                    continue
                return err
            except BaseException:
                if response is not None and ctx.stream:
                    response.close()
                lease.release()  # cancelled (the client went away), or a bug: never keep the lease
                raise
            status = response.status
            if span is not None:
                span.answered(status, not ctx.stream or status == 403)
            if status < 400:
                lease.ok()
                return Answer(response, lease, ctx.stream)
            if status == 403:
                refusal = refused_request(response)
                if refusal is not None:  # the request was refused, not the key: no other attempt
                    lease.forbidden(refusal.code or UNREADABLE)
                    return Answer(response, lease, ctx.stream, refusal)
            if _retry(lease, response) and self.pool.can_retry(base.name, tried):
                if ctx.stream:
                    response.close()
                lease.release()
                continue
            if status in (401, 403):
                return Answer(response, lease, ctx.stream, upstream_key_rejected(upstream, status))
            return Answer(response, lease, ctx.stream)

    def close(self) -> None:
        self._http.close()


def _retry(lease: Lease, response: http1.Response) -> bool:
    """Report an error answer's status to the key's lease; True when another key should be tried.
    (A 403 gets here only when it refused the key itself.)"""
    status = response.status
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
