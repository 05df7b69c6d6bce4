"""Authentication by any of the configured methods: keygate keys, JWT bearer, OAuth2 introspection.

The bearer token's shape picks the method: ``kg_...`` is a keygate key (checked by
:class:`~keygate.guards.auth.KeyAuth`), three dot-separated base64url parts are a JWT, anything
else is an opaque OAuth2 token for introspection. A method that is off simply is not tried.

A token principal has no key record, so one is synthesised for the rest of the chain: its id is
``jwt:<subject>`` or ``oauth:<subject>`` (that is what usage records and the access log show),
its policy is empty and its team (mapped from a configured claim) carries the policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from ..chain import Guard
from ..context import Context
from ..errors import AuthenticationFailed, KeygateError, PermissionDenied
from ..keycache import KeyCache
from ..types import KeyRecord
from .auth import MALFORMED, MISSING, KeyAuth, bearer_token

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
NO_METHOD = AuthenticationFailed("This kind of credential is not accepted here.", code="invalid_api_key")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token says the caller is."""

    kind: str  # "jwt" or "oauth"
    subject: str
    team: str | None  # a team id or name from the mapping claim, if any


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal | KeygateError: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def claim_team(claims: dict[str, Any], claim: str | None, cache: KeyCache) -> str | None:
    """The first value of ``claim`` (a string, space-separated scopes, or a list) naming a known team."""
    if claim is None:
        return None
    value = claims.get(claim)
    if isinstance(value, str):
        values = value.split()
    elif isinstance(value, list):
        values = [v for v in value if isinstance(v, str)]
    else:
        return None
    for v in values:
        if cache.find_team(v) is not None:
            return v
    return values[0] if values else None


class Authenticate(Guard):
    name = "auth"
    needs = frozenset({"headers"})
    provides = frozenset({"key", "team"})

    def __init__(
        self,
        cache: KeyCache,
        key_auth: KeyAuth | None,
        jwt: TokenVerifier | None = None,
        introspect: TokenVerifier | None = None,
    ) -> None:
        self._cache = cache
        self._keys = key_auth
        self._jwt = jwt
        self._introspect = introspect
        self._verifiers = [v for v in (jwt, introspect) if v is not None]

    async def start(self) -> None:
        for v in self._verifiers:
            await v.start()

    async def stop(self) -> None:
        for v in self._verifiers:
            await v.stop()

    async def request(self, ctx: Context) -> KeygateError | None:
        token = bearer_token(ctx)
        if token is None:
            return MISSING
        if token.startswith("kg_"):
            return self._keys.request(ctx) if self._keys is not None else NO_METHOD
        if self._jwt is not None and _JWT_SHAPE.match(token):
            result = await self._jwt.verify(token)
        elif self._introspect is not None and len(token) <= 4096:
            result = await self._introspect.verify(token)
        else:
            return MALFORMED if self._keys is not None else NO_METHOD
        if isinstance(result, KeygateError):
            return result
        return self._admit(ctx, result)

    def _admit(self, ctx: Context, principal: Principal) -> KeygateError | None:
        team = self._cache.find_team(principal.team) if principal.team is not None else None
        if principal.team is not None and team is None:
            return PermissionDenied("The token's team is not known to this gateway.", code="unknown_team")
        subject = principal.subject[:200]
        ctx.key = KeyRecord(
            id=f"{principal.kind}:{subject}",
            name=subject,
            key_hash="",
            hint=principal.kind,
            created_at=0.0,
            team_id=team.id if team is not None else None,
        )
        ctx.team = team
        return None
