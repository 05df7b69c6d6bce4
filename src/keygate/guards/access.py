"""Assemble the authentication guard from the configured methods."""

from __future__ import annotations

from ..config import Settings
from ..keycache import KeyCache
from .auth import KeyAuth
from .authn import Authenticate, TokenVerifier
from .introspect import Introspector
from .jwt_auth import JWTVerifier


def build_authenticate(settings: Settings, keys: KeyCache) -> Authenticate | KeyAuth:
    """The authentication guard: the plain (never awaiting) :class:`KeyAuth` when keygate keys are
    the only method, else :class:`Authenticate`, which awaits token verification."""
    auth = settings.access.auth
    jwt: TokenVerifier | None = None
    introspect: TokenVerifier | None = None
    if auth.jwt is not None:
        jwt = JWTVerifier(auth.jwt, keys)
    if auth.introspection is not None:
        introspect = Introspector(auth.introspection, keys)
    key_auth = KeyAuth(keys, settings.pepper) if auth.keys else None
    if key_auth is not None and jwt is None and introspect is None:
        return key_auth
    return Authenticate(keys, key_auth, jwt, introspect)
