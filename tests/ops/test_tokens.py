"""``keygate.ops.tokens``: admin tokens with a role, stored as HMAC hashes; authentication and the
permissions of each role."""

from __future__ import annotations

from typing import Any

import pytest

from keygate import keys as keyfmt
from keygate.errors import InvalidRequest, NotFound
from keygate.ops import tokens
from keygate.store import AdminToken, SQLiteStore
from keygate.types import Secret

from .conftest import Ops


def test_role_permissions() -> None:
    assert all(tokens.allowed("admin", p) for perms in tokens.PERMISSIONS.values() for p in perms)
    assert tokens.allowed("key-manager", "keys:write") and not tokens.allowed("key-manager", "usage:read")
    assert not any(tokens.allowed("auditor", p) for p in tokens.PERMISSIONS["admin"] if p.endswith(":write"))
    assert not tokens.allowed("nobody", "keys:read")
    assert set(tokens.PERMISSIONS) == set(tokens.ROLES)


def test_create_shows_the_token_once_and_authenticates_it(ops: Ops) -> None:
    view = tokens.create(ops.store, ops.settings.pepper, ops.actor, {"role": "auditor", "name": "grafana"})
    secret = view.pop("token")
    assert keyfmt.is_well_formed(secret, keyfmt.ADMIN_PREFIX)
    assert view == {"id": view["id"], "name": "grafana", "hint": keyfmt.hint(secret), "role": "auditor",
                    "status": "active", "created_at": view["created_at"], "revoked_at": None}  # fmt: skip
    assert tokens.list_views(ops.store) == [view]
    token = tokens.authenticate(ops.store, ops.settings.pepper, secret)
    assert token is not None and token.id == view["id"] and token.token_hash != secret
    (entry,) = ops.audit()
    assert (entry.action, entry.target, entry.details) == ("admin_tokens.create", view["id"],
                                                           {"role": "auditor", "name": "grafana"})  # fmt: skip
    assert secret not in repr(ops.store.list_audit())
    named = tokens.create(ops.store, ops.settings.pepper, ops.actor, {"role": "key-manager"})
    assert named["name"] == "key-manager"  # named after its role by default


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"role": "root"}, "role"),
        ({"role": 1}, "role"),
        ({}, "role"),
        ({"role": "admin", "name": ""}, "name"),
        ({"role": "admin", "name": "a\x00b"}, "name"),
        ({"role": "admin", "scope": "all"}, "scope"),
    ],
)
def test_create_refusals_write_nothing(ops: Ops, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        tokens.create(ops.store, ops.settings.pepper, ops.actor, body)
    assert info.value.param == param
    assert ops.store.list_admin_tokens() == [] and ops.store.list_audit() == []


class CountingStore:
    """The real store, counting the token lookups that reach it."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.lookups = 0

    def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        self.lookups += 1
        return self._store.admin_token_by_hash(token_hash)


def test_authenticate_refuses_malformed_revoked_and_unpeppered(ops: Ops) -> None:
    view = tokens.create(ops.store, ops.settings.pepper, ops.actor, {"role": "admin"})
    counting = CountingStore(ops.store)
    for presented in ("", "garbage", "kg_" + "A" * 38, view["token"][:-1] + "x", view["token"] + " "):
        assert tokens.authenticate(counting, ops.settings.pepper, presented) is None  # type: ignore[arg-type]
    assert counting.lookups == 0  # malformed tokens never reach the database
    assert tokens.authenticate(counting, Secret(""), view["token"]) is None  # type: ignore[arg-type]
    assert tokens.authenticate(counting, Secret("another-pepper-0123456789abcdef"), view["token"]) is None  # type: ignore[arg-type]
    assert counting.lookups == 1
    assert tokens.authenticate(ops.store, ops.settings.pepper, view["token"]) is not None
    revoked, changed = tokens.revoke(ops.store, ops.actor, view["id"])
    assert changed is True and revoked["status"] == "revoked" and revoked["revoked_at"].endswith("Z")
    assert tokens.authenticate(ops.store, ops.settings.pepper, view["token"]) is None
    assert tokens.revoke(ops.store, ops.actor, view["id"])[1] is False
    assert [e.action for e in ops.audit()] == ["admin_tokens.create", "admin_tokens.revoke"]
    with pytest.raises(NotFound, match="no admin token with id 'adm_missing'"):
        tokens.revoke(ops.store, ops.actor, "adm_missing")


def test_has_admin_needs_an_active_admin_role_token(ops: Ops) -> None:
    assert tokens.has_admin(ops.store) is False
    tokens.issue(ops.store, ops.settings.pepper, ops.actor, "auditor", "reader")
    assert tokens.has_admin(ops.store) is False
    admin, _ = tokens.issue(ops.store, ops.settings.pepper, ops.actor, "admin", "root")
    assert tokens.has_admin(ops.store) is True
    tokens.revoke(ops.store, ops.actor, admin.id)
    assert tokens.has_admin(ops.store) is False
