"""Header filtering by allowlist, both directions.

Request headers: only :data:`REQUEST_ALLOW` (plus configured extras) reach the upstream; the
client's Authorization is replaced by the upstream key, and everything that could identify the
client or steer the upstream account (Cookie, X-Forwarded-For, Forwarded, X-Real-IP,
OpenAI-Organization, OpenAI-Project, ...) is dropped simply by not being on the list. Before any of
that, the app refuses a request that carries a header keygate decides by twice
(:data:`SINGLE_VALUED`, :func:`duplicated`) or an API-key header that disagrees with its
Authorization (:func:`conflicting_key`).

Response headers: only :data:`RESPONSE_ALLOW` reaches the client: a few named headers and the six
``x-ratelimit-*`` counts OpenAI sends (:data:`RATE_LIMIT_HEADERS`; any other ``x-ratelimit-`` name,
``openai-version``, Set-Cookie, OpenAI-Organization, OpenAI-Project, Server and hop-by-hop headers
are dropped). Each value that passes is scrubbed of the upstream key the request used, as error
bodies are. keygate's own answers carry an empty Server header (:data:`NO_BANNER`, and
:func:`without_server_banner` for the admin API), so granian adds no banner of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

# RFC 9110 section 7.6.1 (Connection and the fields it conventionally lists) plus
# Proxy-Connection, Keep-Alive and Host: never forwarded, in either direction, whatever the config.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

# Never forwarded upstream, even if an operator lists them as extras.
REQUEST_NEVER: Final = HOP_BY_HOP | {
    "authorization",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
    "openai-organization",
    "openai-project",
    "api-key",
    "x-api-key",
    # W3C trace context and baggage: a client's trace ends at keygate (tracing.py), it does not
    # reach the upstream's logs
    "traceparent",
    "tracestate",
    "baggage",
}

# Request headers keygate decides by (who is asking, how the body is framed and typed, the Host):
# a request carrying one of them twice is refused, so no part of keygate, and no proxy in front
# of it, can read a different one from the one that was checked.
SINGLE_VALUED: Final = frozenset(
    {"authorization", "api-key", "x-api-key", "content-length", "content-type", "transfer-encoding", "host"}
)
# Other places a client (or an SDK configured for Azure) may put an API key: when one is sent
# beside Authorization it must say the same, or which credential was meant is ambiguous.
KEY_HEADERS: Final = ("api-key", "x-api-key")

REQUEST_ALLOW: Final = frozenset({"content-type", "accept", "openai-beta", "idempotency-key"})

# The rate-limit headers OpenAI sends: limit, remaining and reset, for requests and for tokens.
RATE_LIMIT_HEADERS: Final = frozenset(
    f"x-ratelimit-{what}-{unit}"
    for what in ("limit", "remaining", "reset")
    for unit in ("requests", "tokens")
)

# openai-version is not here: no client needs it (the SDKs do not read it), and it describes the
# upstream account rather than the answer.
RESPONSE_ALLOW: Final = RATE_LIMIT_HEADERS | {
    "content-type",
    "content-disposition",
    "x-request-id",
    "openai-processing-ms",
    "retry-after",
    "retry-after-ms",
}


def request_allowlist(extra: Iterable[str] = ()) -> frozenset[str]:
    """The request headers to forward: the built-in list plus safe operator extras."""
    return (REQUEST_ALLOW | {h.lower() for h in extra}) - REQUEST_NEVER


def duplicated(items: Iterable[tuple[str, str]]) -> str | None:
    """The first :data:`SINGLE_VALUED` name that ``items`` (lower-cased names) holds twice.

    Call it only when ``dict(items)`` came out shorter than ``items``: the usual request then pays
    one length comparison for the whole check."""
    seen: set[str] = set()
    for name, _ in items:
        if name in SINGLE_VALUED:
            if name in seen:
                return name
            seen.add(name)
    return None


def conflicting_key(headers: dict[str, str]) -> str | None:
    """The :data:`KEY_HEADERS` name whose value differs from the Authorization bearer token, when
    the request has both; None when there is nothing to disagree with."""
    authorization = headers.get("authorization")
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value is not None and value.strip() != token:
            return name
    return None


def filter_request(
    headers: Iterable[tuple[str, str]], allow: frozenset[str], upstream_key: str
) -> dict[str, str]:
    """Headers to send upstream: allowlisted client headers plus the upstream Authorization."""
    out: dict[str, str] = {}
    for name, value in headers:
        # The server hands over lower-cased names; lower() only the rare name that is not.
        if name in allow:
            out[name] = value
        elif not name.islower() and name.lower() in allow:
            out[name.lower()] = value
    out["authorization"] = "Bearer " + upstream_key
    return out


def filter_response(
    headers: Iterable[tuple[str, str]], upstream_key: str, replaced: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Headers to send back to the client: the allowlisted ones less the ``x-ratelimit-*`` names in
    ``replaced`` (those keygate answers with its own counts), each value with ``upstream_key`` (the
    key the request was sent with) replaced by ``[redacted]``."""
    out = []
    for name, value in headers:
        # The upstream client hands over lower-cased names (HTTP/1.1 and HTTP/2 alike); lower()
        # only the rare name that is not, rather than every name of every response.
        if name not in RESPONSE_ALLOW:
            if name.islower():
                continue
            name = name.lower()
            if name not in RESPONSE_ALLOW:
                continue
        if replaced and name in replaced:
            continue
        if upstream_key in value and upstream_key:
            value = value.replace(upstream_key, "[redacted]")
        out.append((name, value))
    return out


# granian adds "server: granian" to every answer that has no Server header, and has no setting to
# stop it; an empty one of our own keeps it off. The data plane adds it to its header lists.
NO_BANNER: Final = ("server", "")


def without_server_banner(app: Any) -> Any:
    """An ASGI app (the admin API) whose answers carry :data:`NO_BANNER` instead of granian's."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def send_without_banner(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"server"]
                message = {**message, "headers": [*headers, (b"server", b"")]}
            await send(message)

        await app(scope, receive, send_without_banner)

    return wrapped
