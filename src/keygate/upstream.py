"""The upstream HTTP client: pooled, TLS-verifying, never following redirects.

The URL of every upstream request is the configured base URL plus the allowlisted route's path;
nothing the client sends (body, header, query) can change the host. Transport failures map onto
the error tree: refused or failed connections are 502, timeouts 504.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import (
    ConnectError,
    ConnectTimeoutError,
    PyreqwestError,
    RequestTimeoutError,
)

from .config import Settings, Upstream
from .errors import KeygateError, UpstreamError, UpstreamTimeout
from .types import Secret, Usage

log = logging.getLogger("keygate.upstream")

REJECTED_KEY = UpstreamError(
    "The gateway's upstream credentials were rejected. The operator has been notified.",
    code="upstream_auth_failed",
)


class UpstreamClient:
    def __init__(self, settings: Settings) -> None:
        self.timeout = timedelta(seconds=settings.upstream_timeout)
        self._settings = settings
        self._client: Any = self._build(None)
        # Upstreams with their own CA bundle get their own client (TLS roots are per client).
        self._by_ca: dict[Path, Any] = {}

    def _build(self, ca_bundle: Path | None) -> Any:
        builder = ClientBuilder()
        if ca_bundle is not None:
            builder = builder.add_root_certificate_pem(ca_bundle.read_bytes())
        settings = self._settings
        return (
            builder.follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .https_only(False)
            .connect_timeout(timedelta(seconds=settings.connect_timeout))
            .read_timeout(self.timeout)
            .pool_idle_timeout(timedelta(seconds=60))
            .tcp_nodelay(True)
            .no_proxy()
            .build()
        )

    def request(self, upstream: Upstream, method: str, path: str, query: str, headers: dict[str, str]) -> Any:
        url = upstream.base_url + path
        if query:
            url += "?" + query
        client = self._client
        if upstream.ca_bundle is not None:
            client = self._by_ca.get(upstream.ca_bundle)
            if client is None:
                client = self._by_ca[upstream.ca_bundle] = self._build(upstream.ca_bundle)
        return client.request(method, url).headers(headers)

    async def close(self) -> None:
        await self._client.close()
        for client in self._by_ca.values():
            await client.close()


def small_client(connect_timeout: float = 5.0, timeout: float = 10.0) -> Any:
    """A client for keygate's own small outbound calls (JWKS, token introspection).

    Same hardening as the upstream client: no redirects, no proxy from the environment, TLS
    verified; short timeouts, since these calls sit on an authentication path.
    """
    return (
        ClientBuilder()
        .follow_redirects(False)
        .connect_timeout(timedelta(seconds=connect_timeout))
        .timeout(timedelta(seconds=timeout))
        .no_proxy()
        .build()
    )


def map_transport_error(exc: Exception, upstream: Upstream) -> KeygateError:
    """A pyreqwest exception as the client-facing error; the detail goes to the operator log."""
    log.warning(
        "upstream request failed",
        extra={"upstream": upstream.name, "error": type(exc).__name__},
    )
    if isinstance(exc, ConnectTimeoutError):
        return UpstreamTimeout("Timed out connecting to the upstream API.", code="upstream_connect_timeout")
    if isinstance(exc, RequestTimeoutError | TimeoutError):
        return UpstreamTimeout("The upstream API did not answer in time.")
    if isinstance(exc, ConnectError):
        return UpstreamError("Could not connect to the upstream API.", code="upstream_connect_failed")
    if isinstance(exc, PyreqwestError):
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
