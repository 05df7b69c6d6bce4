"""JWT bearer (OIDC) verification against a JWKS URL or a static public key.

The accepted algorithms come from config only, never from the token header, so ``alg: none``
and HS256-signed-with-the-RSA-public-key tokens are refused before any key is touched. ``exp``,
``iss`` and ``aud`` are required, ``nbf`` is honoured, and ``leeway`` seconds of clock skew are
allowed.

With ``team_claim`` set, the token must name a known team: a claim that is absent, empty, not a
string (or list of strings), or names no team keygate knows is 403 ``unknown_team``, never "no
team" (which would mean no team policy at all). With ``default_team`` set too, a token whose claim
is absent or empty gets that team instead (one that names an unknown team is still refused).

The JWKS is fetched with the async HTTP client (never blocking the event loop) and cached. An
unknown ``kid`` triggers a refetch at most once per ``jwks_refresh_interval``; the whole set is
refetched every ``jwks_cache_ttl``. When a refetch fails the last good keys stay in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .. import outbound
from ..access_config import JWTSettings
from ..errors import AuthenticationFailed, KeygateError, PermissionDenied
from ..keycache import KeyCache
from .authn import Principal, claim_team

log = logging.getLogger("keygate.access")

INVALID = AuthenticationFailed("Invalid bearer token.", code="invalid_token")
EXPIRED = AuthenticationFailed("The bearer token has expired.", code="expired_token")
NOT_YET = AuthenticationFailed("The bearer token is not valid yet.", code="invalid_token")
WRONG_AUD = AuthenticationFailed("The bearer token is not meant for this gateway.", code="invalid_token")
WRONG_ISS = AuthenticationFailed("The bearer token has an untrusted issuer.", code="invalid_token")
BAD_ALG = AuthenticationFailed("The bearer token's algorithm is not accepted.", code="invalid_token")
UNKNOWN_KID = AuthenticationFailed("The bearer token was signed with an unknown key.", code="invalid_token")
NO_TEAM = PermissionDenied("The bearer token names no team known to this gateway.", code="unknown_team")


class JWKSCache:
    """Signing keys by kid, fetched without blocking and kept through identity-provider outages."""

    def __init__(self, url: str, refresh_interval: float, ttl: float, algorithms: tuple[str, ...]) -> None:
        self._url = url
        self._refresh_interval = refresh_interval
        self._ttl = ttl
        self._algorithms = algorithms
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0  # last successful fetch
        self._tried_at = -1e9  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self._client: Any = None
        self.fetches = 0

    async def start(self) -> None:
        self._client = outbound.async_client()
        await self._refresh()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def get(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        if now - self._fetched_at > self._ttl:
            await self._refresh(min_gap=self._refresh_interval)
        key = self._lookup(kid)
        if key is None:
            await self._refresh(min_gap=self._refresh_interval)
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self, min_gap: float = 0.0) -> None:
        async with self._lock:
            if time.monotonic() - self._tried_at < min_gap:
                return
            self._tried_at = time.monotonic()
            self.fetches += 1
            try:
                response = await self._client.get(self._url)
                if response.status_code != 200:
                    raise ValueError(f"status {response.status_code}")
                data = orjson.loads(response.content)
                keys = self._parse(data)
            except Exception as exc:
                log.warning(
                    "JWKS fetch failed; keeping the last good keys",
                    extra={"error": type(exc).__name__, "keys": len(self._keys)},
                )
                return
            self._keys = keys
            self._fetched_at = time.monotonic()

    def _parse(self, data: Any) -> dict[str, jwt.PyJWK]:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWK set")
        out: dict[str, jwt.PyJWK] = {}
        for raw in data["keys"]:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue  # an algorithm or key type we do not use
            out[str(raw.get("kid", ""))] = key
        return out


class JWTVerifier:
    def __init__(self, settings: JWTSettings, cache: KeyCache) -> None:
        self._s = settings
        self._cache = cache
        self._jwks = (
            JWKSCache(
                settings.jwks_url,
                settings.jwks_refresh_interval,
                settings.jwks_cache_ttl,
                settings.algorithms,
            )
            if settings.jwks_url
            else None
        )
        self._static: Any = None
        if settings.public_key_file is not None:
            self._static = load_pem_public_key(settings.public_key_file.read_bytes())

    async def start(self) -> None:
        if self._jwks is not None:
            await self._jwks.start()

    async def stop(self) -> None:
        if self._jwks is not None:
            await self._jwks.stop()

    async def verify(self, token: str) -> Principal | KeygateError:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return INVALID
        if header.get("alg") not in self._s.algorithms:
            return BAD_ALG
        if self._jwks is not None:
            kid = header.get("kid")
            jwk = await self._jwks.get(kid if isinstance(kid, str) else None)
            if jwk is None:
                return UNKNOWN_KID
            key: Any = jwk.key
        else:
            key = self._static
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self._s.algorithms),
                audience=self._s.audience,
                issuer=self._s.issuer,
                leeway=self._s.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            return EXPIRED
        except jwt.ImmatureSignatureError:
            return NOT_YET
        except jwt.InvalidAudienceError:
            return WRONG_AUD
        except jwt.InvalidIssuerError:
            return WRONG_ISS
        except jwt.PyJWTError:
            return INVALID
        subject = claims.get(self._s.subject_claim)
        if not isinstance(subject, str) or not subject:
            return AuthenticationFailed("The bearer token names no subject.", code="invalid_token")
        team_claim = self._s.team_claim
        if team_claim is None:
            return Principal("jwt", subject, None)
        # A claim value naming no known team comes back as itself: Authenticate refuses it.
        team = claim_team(claims, team_claim, self._cache)
        if team is None:
            # Absent or empty: the configured default team, if any; anything else is refused.
            given = claims.get(team_claim)
            empty = given is None or given == [] or (type(given) is str and not given.split())
            if not empty or self._s.default_team is None:
                return NO_TEAM
            team = self._s.default_team
        return Principal("jwt", subject, team)
