"""Admin tokens: ``kga_`` keys with a role, stored as HMAC hashes like client keys.

Roles and what they may do:

============ ==========================================================
admin        everything: keys, teams, usage, audit, admin tokens
key-manager  keys and teams (read and write)
auditor      read-only: keys, teams, usage, audit, admin tokens
============ ==========================================================
"""

from __future__ import annotations

import time
from typing import Any, Final

from .. import keys as keyfmt
from ..cli._common import fmt_time
from ..errors import InvalidRequest
from ..store import Store
from ..store.admin_tokens import AdminToken
from ..types import Secret

ROLES: Final = ("admin", "key-manager", "auditor")

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
        }
    ),
    "key-manager": frozenset({"keys:read", "keys:write", "teams:read", "teams:write"}),
    "auditor": frozenset({"keys:read", "teams:read", "usage:read", "audit:read", "tokens:read"}),
}


def allowed(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def issue(store: Store, pepper: Secret, role: str, name: str) -> tuple[AdminToken, str]:
    """Create and store a new admin token; the plaintext is returned once and never stored."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
    issued = keyfmt.issue(pepper, keyfmt.ADMIN_PREFIX)
    secret = issued.secret
    token = AdminToken(
        id=keyfmt.new_id("adm"),
        name=name,
        token_hash=issued.key_hash,
        hint=issued.hint,
        role=role,
        created_at=time.time(),
    )
    store.insert_admin_token(token)
    return token, secret


def authenticate(store: Store, pepper: Secret, presented: str) -> AdminToken | None:
    """The active token ``presented`` is, or None. Malformed tokens never reach the database."""
    if not keyfmt.is_well_formed(presented, keyfmt.ADMIN_PREFIX):
        return None
    token = store.admin_token_by_hash(keyfmt.hash_key(pepper, presented))
    if token is None or not token.active:
        return None
    return token


def has_admin(store: Store) -> bool:
    """True once any active admin-role token exists."""
    return any(t.active and t.role == "admin" for t in store.list_admin_tokens())


def token_view(t: AdminToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "hint": t.hint,
        "role": t.role,
        "status": t.status,
        "created_at": fmt_time(t.created_at),
        "revoked_at": fmt_time(t.revoked_at) if t.revoked_at else None,
    }
