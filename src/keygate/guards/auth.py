"""Authenticate keygate client keys (``Authorization: Bearer kg_...``).

Error messages never echo what the client sent: a key in an error body or log line is a leak.
"""

from __future__ import annotations

from .. import keys
from ..chain import Guard
from ..context import Context
from ..errors import AuthenticationFailed, KeygateError
from ..keycache import KeyCache
from ..types import Secret

MISSING = AuthenticationFailed(
    "Missing API key. Send your keygate key as 'Authorization: Bearer kg_...'.", code="missing_api_key"
)
MALFORMED = AuthenticationFailed("Malformed API key: not a keygate key.", code="invalid_api_key")
UNKNOWN = AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
REVOKED = AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")


def bearer_token(ctx: Context) -> str | None:
    value = ctx.headers.get("authorization")
    if value is None or value[:7].lower() != "bearer ":
        return None
    return value[7:].strip() or None


class KeyAuth(Guard):
    name = "auth"
    needs = frozenset({"headers"})
    provides = frozenset({"key", "team"})

    def __init__(self, cache: KeyCache, pepper: Secret) -> None:
        keys.require_pepper(pepper)
        self._cache = cache
        self._pepper = pepper

    def request(self, ctx: Context) -> KeygateError | None:
        token = bearer_token(ctx)
        if token is None:
            return MISSING
        record = self._cache.lookup(keys.hash_key(self._pepper, token))
        if record is None:
            # The checksum only decides which message a failure gets; the lookup itself is an
            # in-memory dict, so a valid key never pays for the checksum.
            return UNKNOWN if keys.is_well_formed(token) else MALFORMED
        if not record.active:
            return REVOKED
        ctx.key = record
        ctx.team = self._cache.team(record.team_id)
        return None
