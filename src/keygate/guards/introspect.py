"""OAuth2 opaque access tokens, verified by RFC 7662 token introspection.

keygate posts ``token=...`` to the configured introspection endpoint, authenticating with HTTP
Basic client credentials that come from the environment. Results are cached by a hash of the
token (never the token itself): an active one for its remaining life (``exp``) capped by
``cache_ttl``, an inactive one for ``inactive_cache_ttl``. When the endpoint cannot be reached the
request gets 503 and nothing is cached.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from typing import Any
from urllib.parse import quote, urlencode

import orjson

from .. import outbound
from ..access_config import IntrospectionSettings
from ..errors import AuthenticationFailed, KeygateError, UpstreamUnavailable
from ..keycache import KeyCache
from .authn import Principal, claim_team

log = logging.getLogger("keygate.access")

INACTIVE = AuthenticationFailed("Invalid or expired access token.", code="invalid_token")
UNAVAILABLE = UpstreamUnavailable(
    "The identity provider could not be reached to check the access token.", code="introspection_failed"
)
_MAX_ENTRIES = 50_000


class Introspector:
    def __init__(self, settings: IntrospectionSettings, cache: KeyCache) -> None:
        self._s = settings
        self._cache = cache
        self._results: dict[bytes, tuple[float, Principal | None]] = {}
        self._client: Any = None
        user = quote(settings.client_id.reveal(), safe="")
        password = quote(settings.client_secret.reveal(), safe="")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.calls = 0

    async def start(self) -> None:
        self._client = outbound.async_client()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def verify(self, token: str) -> Principal | KeygateError:
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self._results.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1] if cached[1] is not None else INACTIVE
        try:
            claims = await self._introspect(token)
        except Exception as exc:
            log.warning("token introspection failed", extra={"error": type(exc).__name__})
            return UNAVAILABLE
        principal, ttl = self._judge(claims)
        if len(self._results) >= _MAX_ENTRIES:
            self._results = {k: v for k, v in self._results.items() if v[0] > now}
            if len(self._results) >= _MAX_ENTRIES:
                self._results.clear()
        if ttl > 0:
            self._results[digest] = (now + ttl, principal)
        return principal if principal is not None else INACTIVE

    async def _introspect(self, token: str) -> Any:
        self.calls += 1
        body = urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        response = await self._client.post(
            self._s.url,
            headers={
                "authorization": self._auth,
                "content-type": "application/x-www-form-urlencoded",
                "accept": "application/json",
            },
            content=body,
        )
        if response.status_code != 200:
            raise ValueError(f"status {response.status_code}")
        return orjson.loads(response.content)

    def _judge(self, claims: Any) -> tuple[Principal | None, float]:
        """The principal (None if inactive) and how long to cache that answer."""
        if not isinstance(claims, dict) or claims.get("active") is not True:
            return None, self._s.inactive_cache_ttl
        exp = claims.get("exp")
        ttl = self._s.cache_ttl
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            remaining = exp - time.time()
            if remaining <= 0:
                return None, self._s.inactive_cache_ttl
            ttl = min(ttl, remaining)
        subject = claims.get(self._s.subject_claim) or claims.get("client_id")
        if not isinstance(subject, str) or not subject:
            return None, self._s.inactive_cache_ttl
        team = claim_team(claims, self._s.team_claim, self._cache)
        if team is None and self._s.team_claim is not None:
            # With team_claim set, a token must name a team (an unknown one is refused later, by
            # Authenticate): one without is refused, never served as "no team policy".
            return None, self._s.inactive_cache_ttl
        return Principal("oauth", subject, team), ttl
