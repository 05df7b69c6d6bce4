"""Admin tokens: ``kga_`` keys with a role, stored as HMAC hashes like client keys.

Roles and what they may do:

============ ==========================================================
admin        everything: keys, teams, usage, audit, admin tokens
key-manager  keys and teams (read and write)
auditor      read-only: keys, teams, usage, audit, admin tokens
metrics      GET /metrics only (a Prometheus scraper's token)
============ ==========================================================

``admin`` may scrape ``/metrics`` too; ``key-manager`` and ``auditor`` may not.
"""

from __future__ import annotations

import time
from typing import Any, Final

from .. import keys as keyfmt
from ..errors import InvalidRequest, NotFound
from ..store import AdminToken, Store
from ..types import Secret
from .audit import Actor
from .validate import check_name, check_object
from .views import token_view

ROLES: Final = ("admin", "key-manager", "auditor", "metrics")

PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "admin": frozenset(
        {
            "keys:read",
            "keys:write",
            "teams:read",
            "teams:write",
            "usage:read",
            "audit:read",
            "tokens:read",
            "tokens:write",
            "metrics:read",
            "objects:read",
            "objects:write",
        }
    ),
    "key-manager": frozenset(
        {"keys:read", "keys:write", "teams:read", "teams:write", "objects:read", "objects:write"}
    ),
    "auditor": frozenset(
        {"keys:read", "teams:read", "usage:read", "audit:read", "tokens:read", "objects:read"}
    ),
    "metrics": frozenset({"metrics:read"}),
}


def allowed(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def issue(store: Store, pepper: Secret, actor: Actor, role: str, name: str) -> tuple[AdminToken, str]:
    """Create and store a new admin token; the plaintext is returned once and never stored."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
    name = check_name(name)
    issued = keyfmt.issue(pepper, keyfmt.ADMIN_PREFIX)
    token = AdminToken(
        id=keyfmt.new_id("adm"),
        name=name,
        token_hash=issued.key_hash,
        hint=issued.hint,
        role=role,
        created_at=time.time(),
    )
    store.insert_admin_token(token, actor.record("admin_tokens.create", token.id, role=role, name=name))
    return token, issued.secret


def create(store: Store, pepper: Secret, actor: Actor, body: Any) -> dict[str, Any]:
    """A new admin token from ``{"role", "name"?}``; the view carries the secret (``token``) once."""
    body = check_object(body, {"role", "name"}, {"role"})
    role = body["role"]
    token, secret = issue(store, pepper, actor, role if isinstance(role, str) else "", body.get("name", role))
    return {**token_view(token), "token": secret}


def authenticate(store: Store, pepper: Secret, presented: str) -> AdminToken | None:
    """The active token ``presented`` is, or None. Malformed tokens never reach the database."""
    if not pepper or not keyfmt.is_well_formed(presented, keyfmt.ADMIN_PREFIX):
        return None
    token = store.admin_token_by_hash(keyfmt.hash_key(pepper, presented))
    if token is None or not token.active:
        return None
    return token


def has_admin(store: Store) -> bool:
    """True once any active admin-role token exists."""
    return any(t.active and t.role == "admin" for t in store.list_admin_tokens())


def list_views(store: Store) -> list[dict[str, Any]]:
    return [token_view(t) for t in store.list_admin_tokens()]


def revoke(store: Store, actor: Actor, token_id: str) -> tuple[dict[str, Any], bool]:
    """Revoke an admin token (effective on its next request); the view, and whether it was active."""
    if store.get_admin_token(token_id) is None:
        raise NotFound(f"no admin token with id {token_id[:80]!r}")
    changed = store.revoke_admin_token(token_id, time.time(), actor.record("admin_tokens.revoke", token_id))
    token = store.get_admin_token(token_id)
    assert token is not None
    return token_view(token), changed
