"""The one policy for keygate's own outbound HTTP calls (not the upstream API, see ``http1.py``).

JWKS fetches, token introspection, budget webhooks and the CLI's calls to a remote admin API all
use a client made here, with the same rules as the upstream client:

- no redirects are followed (a redirect must never carry a token or a payload to another host);
- no proxy or certificate settings are taken from the environment (``HTTP_PROXY``,
  ``SSL_CERT_FILE``...): only the configured URL is contacted;
- TLS certificates are always verified;
- every call has a connect timeout and an overall timeout.
"""

from __future__ import annotations

import httpx


def _timeout(connect: float, total: float) -> httpx.Timeout:
    return httpx.Timeout(total, connect=connect)


def async_client(connect_timeout: float = 5.0, timeout: float = 10.0) -> httpx.AsyncClient:
    """A client for calls made on the event loop."""
    return httpx.AsyncClient(
        follow_redirects=False, trust_env=False, verify=True, timeout=_timeout(connect_timeout, timeout)
    )


def sync_client(base_url: str, headers: dict[str, str], timeout: float = 30.0) -> httpx.Client:
    """A client for the CLI (no event loop)."""
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        follow_redirects=False,
        trust_env=False,
        verify=True,
        timeout=_timeout(min(timeout, 10.0), timeout),
    )
