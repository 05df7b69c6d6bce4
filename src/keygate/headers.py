"""Header filtering by allowlist, both directions.

Request headers: only :data:`REQUEST_ALLOW` (plus configured extras) reach the upstream; the
client's Authorization is replaced by the upstream key, and everything that could identify the
client or steer the upstream account (Cookie, X-Forwarded-For, Forwarded, X-Real-IP,
OpenAI-Organization, OpenAI-Project, ...) is dropped simply by not being on the list.

Response headers: only :data:`RESPONSE_ALLOW` and the ``x-ratelimit-*`` family reach the client;
Set-Cookie, OpenAI-Organization, OpenAI-Project and hop-by-hop headers are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

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
}

REQUEST_ALLOW: Final = frozenset({"content-type", "accept", "openai-beta", "idempotency-key"})

RESPONSE_ALLOW: Final = frozenset(
    {
        "content-type",
        "content-disposition",
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "retry-after",
        "retry-after-ms",
    }
)


def request_allowlist(extra: Iterable[str] = ()) -> frozenset[str]:
    """The request headers to forward: the built-in list plus safe operator extras."""
    return (REQUEST_ALLOW | {h.lower() for h in extra}) - REQUEST_NEVER


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
    headers: Iterable[tuple[str, str]], replaced: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """Headers to send back to the client, less the ``x-ratelimit-*`` names in ``replaced`` (those
    keygate answers with its own counts)."""
    out = []
    for name, value in headers:
        # The upstream client hands over lower-cased names (HTTP/1.1 and HTTP/2 alike); lower()
        # only the rare name that is not, rather than every name of every response.
        if name in RESPONSE_ALLOW or (name.startswith("x-ratelimit-") and name not in replaced):
            out.append((name, value))
        elif not name.islower():
            lname = name.lower()
            if lname in RESPONSE_ALLOW or (lname.startswith("x-ratelimit-") and lname not in replaced):
                out.append((lname, value))
    return out
