"""The upstream HTTP client: pooled, TLS-verifying, never following redirects.

The URL of every upstream request is the configured base URL plus the allowlisted route's path;
nothing the client sends (body, header, query) can change the host. Transport failures map onto
the error tree: refused or failed connections are 502, timeouts 504.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import httpx
import orjson

from . import http1
from .config import Settings, Upstream
from .errors import InvalidRequest, KeygateError, UpstreamError, UpstreamTimeout
from .types import Secret, Usage

log = logging.getLogger("keygate.upstream")

REJECTED_KEY = UpstreamError(
    "The gateway's upstream credentials were rejected. The operator has been notified.",
    code="upstream_auth_failed",
)


class UpstreamClient:
    """Sends a request to an upstream at its configured base URL plus an allowlisted path."""

    def __init__(self, settings: Settings) -> None:
        self._http = http1.Client(settings.connect_timeout, settings.upstream_timeout)

    async def send(
        self,
        upstream: Upstream,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        stream: bool = False,
    ) -> http1.Response:
        """The whole response, or with ``stream`` its head (read the body, then ``close()`` it)."""
        origin = self._http.origin(upstream.base_url, upstream.ca_bundle)
        target = origin.path + path
        if query:
            target += "?" + query
        return await self._http.request(origin, method, target, headers, body, stream)

    async def close(self) -> None:
        self._http.close()


def small_client(connect_timeout: float = 5.0, timeout: float = 10.0) -> httpx.AsyncClient:
    """A client for keygate's own small outbound calls (JWKS, token introspection).

    Same hardening as the upstream client: no redirects, no proxy from the environment, TLS
    verified; short timeouts, since these calls sit on an authentication path.
    """
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
    )


def map_transport_error(exc: Exception, upstream: Upstream) -> KeygateError:
    """A transport failure as the client-facing error; the detail goes to the operator log."""
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
    if isinstance(exc, http1.TransportError):
        return UpstreamError("The connection to the upstream API failed.", code="upstream_connection_error")
    raise exc


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


def usage_from_json(body: bytes, usage: Usage) -> None:
    """Fill ``usage`` from the last ``"usage"`` object of a JSON response, without parsing it all."""
    idx = body.rfind(b'"usage"')
    if idx < 0:
        return
    start = body.find(b"{", idx)
    if start < 0 or body[idx + 7 : start].strip(b" \t\r\n:"):
        return
    # The usage object nests at most a couple of detail objects: try each closing brace in turn
    # until the braces balance (C-level searches, no per-byte Python loop).
    end = start
    for _ in range(8):
        end = body.find(b"}", end + 1)
        if end < 0:
            return
        candidate = body[start : end + 1]
        if candidate.count(b"{") == candidate.count(b"}"):
            with contextlib.suppress(orjson.JSONDecodeError):
                fill_usage(orjson.loads(candidate), usage)
            return


def fill_usage(data: Any, usage: Usage) -> None:
    """Copy token counts from an OpenAI usage object (chat, completions, embeddings or responses)."""
    if not isinstance(data, dict):
        return
    prompt = data.get("prompt_tokens", data.get("input_tokens"))
    completion = data.get("completion_tokens", data.get("output_tokens", 0))
    if isinstance(prompt, int):
        usage.prompt_tokens = prompt
    if isinstance(completion, int):
        usage.completion_tokens = completion
    details = data.get("prompt_tokens_details") or data.get("input_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        usage.cached_tokens = details["cached_tokens"]
