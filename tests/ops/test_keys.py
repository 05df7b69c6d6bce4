"""``keygate.ops.keys``: create, update, revoke and rotate client keys, and what is due; everything
validated before anything is written, each change stored with its audit entry."""

from __future__ import annotations

import time
from typing import Any

import pytest

from keygate import keys as keyfmt
from keygate.errors import InvalidRequest, KeygateError, NotFound
from keygate.ops import keys, teams
from keygate.store import SQLiteStore
from keygate.times import instant

from .conftest import Ops


def state(store: SQLiteStore) -> tuple[Any, ...]:
    return (store.list_keys(), store.list_audit(1000), list(store.list_grace_secrets(0.0)))


def test_create_shows_the_secret_once_and_stores_only_its_hash(ops: Ops) -> None:
    view = keys.create(ops.store, ops.settings, ops.actor, {"name": "billing"})
    secret = view.pop("key")
    assert keyfmt.is_well_formed(secret) and view["id"].startswith("key_")
    assert view == {
        "id": view["id"], "name": "billing", "hint": keyfmt.hint(secret), "status": "active",
        "created_at": view["created_at"], "last_used_at": None, "team_id": None, "upstream": None,
        "policy": {},
    }  # fmt: skip
    (record,) = ops.store.list_keys()
    assert record.key_hash == keyfmt.hash_key(ops.settings.pepper, secret) and record.hint == view["hint"]
    assert keys.list_views(ops.store) == [view] and keys.get(ops.store, view["id"]) == record
    (entry,) = ops.audit()
    assert (entry.actor, entry.origin, entry.action, entry.target) == (
        "adm_ops",
        "10.0.0.7",
        "keys.create",
        view["id"],
    )
    assert entry.details == {"name": "billing", "team": None, "upstream": None, "policy": {}}
    assert secret not in repr(ops.store.list_audit()) and secret not in repr(ops.store.list_keys())


def test_create_with_team_upstream_and_policy(ops: Ops) -> None:
    team = teams.create(ops.store, ops.actor, {"name": "research"})
    view = keys.create(ops.store, ops.settings, ops.actor, {
        "name": "nb", "team": "research", "upstream": "openai",
        "policy": {"models": ["gpt-4o"], "expires_at": 4102444800, "rpm": 10},
    })  # fmt: skip
    assert view["team_id"] == team["id"] and view["upstream"] == "openai"
    assert view["policy"] == {"models": ["gpt-4o"], "expires_at": "2100-01-01T00:00:00Z", "rpm": 10}
    by_id = keys.create(
        ops.store, ops.settings, ops.actor, {"name": "nb2", "team": team["id"], "upstream": ""}
    )
    assert by_id["team_id"] == team["id"] and by_id["upstream"] is None


@pytest.mark.parametrize(
    ("body", "error", "param"),
    [
        ("not an object", InvalidRequest, None),
        ({}, InvalidRequest, "name"),
        ({"name": "x", "owner": "me"}, InvalidRequest, "owner"),
        ({"name": ""}, InvalidRequest, "name"),
        ({"name": "evil\u001b[2J"}, InvalidRequest, "name"),
        ({"name": 5}, InvalidRequest, "name"),
        ({"name": "x", "team": "nope"}, NotFound, "team"),
        ({"name": "x", "team": ["list"]}, InvalidRequest, "team"),
        ({"name": "x", "upstream": "nope"}, InvalidRequest, "upstream"),
        ({"name": "x", "policy": {"rpm": 0}}, InvalidRequest, "policy"),
        ({"name": "x", "policy": {"rpm": 2**53}}, InvalidRequest, "policy"),
        ({"name": "x", "policy": []}, InvalidRequest, "policy"),
    ],
)
def test_create_refuses_before_writing_anything(
    ops: Ops, body: Any, error: type[KeygateError], param: str
) -> None:
    before = state(ops.store)
    with pytest.raises(error) as info:
        keys.create(ops.store, ops.settings, ops.actor, body)
    assert info.value.param == param
    assert state(ops.store) == before


def test_update_changes_only_what_differs(ops: Ops) -> None:
    teams.create(ops.store, ops.actor, {"name": "red"})
    made = keys.create(ops.store, ops.settings, ops.actor, {"name": "k", "team": "red", "policy": {"rpm": 1}})
    same = keys.update(ops.store, ops.settings, ops.actor, made["id"], {"name": "k", "policy": {"rpm": 1}})
    assert same == {k: v for k, v in made.items() if k != "key"}
    assert [e.action for e in ops.audit()] == [
        "teams.create",
        "keys.create",
    ]  # nothing changed, nothing audited
    changed = keys.update(ops.store, ops.settings, ops.actor, made["id"],
                          {"name": "k2", "team": None, "upstream": "openai", "policy": {"tpm": 5}})  # fmt: skip
    assert (changed["name"], changed["team_id"], changed["upstream"], changed["policy"]) == (
        "k2",
        None,
        "openai",
        {"tpm": 5},
    )
    (entry,) = ops.audit("keys.update")
    assert entry.details == {
        "changes": {"name": "k2", "team_id": None, "upstream": "openai", "policy": {"tpm": 5}}
    }
    before = state(ops.store)
    for body, error in (
        ({"name": "\u2028"}, InvalidRequest),
        ({"policy": {"models": "gpt-4o"}}, InvalidRequest),
        ({"team": "blue"}, NotFound),
        ({"key": "kg_x"}, InvalidRequest),
        ({"name": "fine", "policy": {"rpm": -1}}, InvalidRequest),  # all or nothing
    ):
        with pytest.raises(error):
            keys.update(ops.store, ops.settings, ops.actor, made["id"], body)
    with pytest.raises(NotFound, match="no key with id 'key_missing'"):
        keys.update(ops.store, ops.settings, ops.actor, "key_missing", {"name": "x"})
    assert state(ops.store) == before


def test_revoke_reports_whether_it_changed_anything(ops: Ops) -> None:
    made = keys.create(ops.store, ops.settings, ops.actor, {"name": "k"})
    view, changed = keys.revoke(ops.store, ops.actor, made["id"])
    assert changed is True and view["status"] == "revoked"
    view, changed = keys.revoke(ops.store, ops.actor, made["id"])
    assert changed is False and view["status"] == "revoked"
    assert [e.action for e in ops.audit()] == ["keys.create", "keys.revoke"]
    with pytest.raises(NotFound) as info:
        keys.revoke(ops.store, ops.actor, "key_" + "x" * 500)
    assert len(info.value.message) < 120  # a long id is cut in the message


def test_rotate_keeps_the_record_and_the_old_secret_for_the_grace_period(ops: Ops) -> None:
    made = keys.create(ops.store, ops.settings, ops.actor, {"name": "k", "policy": {"rotate_every": 86400}})
    before = time.time()
    rotated = keys.rotate(ops.store, ops.settings, ops.actor, made["id"], 3600.0)
    assert set(rotated) == {"id", "name", "key", "hint", "old_valid_until"}
    assert (
        rotated["id"] == made["id"]
        and rotated["key"] != made["key"]
        and keyfmt.is_well_formed(rotated["key"])
    )
    (record,) = ops.store.list_keys()
    assert record.key_hash == keyfmt.hash_key(ops.settings.pepper, rotated["key"])
    rotated_at = instant(record.policy["rotated_at"])
    assert rotated_at is not None and before - 1 <= rotated_at <= time.time()
    assert record.policy["rotate_every"] == 86400
    ((old_hash, key_id, until),) = ops.store.list_grace_secrets(time.time())
    assert old_hash == keyfmt.hash_key(ops.settings.pepper, made["key"]) and key_id == made["id"]
    assert before + 3600 - 1 <= until <= time.time() + 3600
    assert instant(rotated["old_valid_until"]) == pytest.approx(until, abs=1)
    (entry,) = ops.audit("keys.rotate")
    assert entry.details == {"grace_seconds": 3600.0}
    keys.revoke(ops.store, ops.actor, made["id"])
    snapshot = state(ops.store)
    with pytest.raises(InvalidRequest, match="is revoked"):
        keys.rotate(ops.store, ops.settings, ops.actor, made["id"], 0.0)
    with pytest.raises(NotFound):
        keys.rotate(ops.store, ops.settings, ops.actor, "key_missing", 0.0)
    assert state(ops.store) == snapshot


def test_due_lists_rotations_and_expiries_soonest_first(ops: Ops) -> None:
    now = time.time()
    soon = keys.create(
        ops.store, ops.settings, ops.actor, {"name": "soon", "policy": {"rotate_every": 2 * 86400}}
    )
    keys.create(ops.store, ops.settings, ops.actor, {"name": "later", "policy": {"rotate_every": 90 * 86400}})
    past = keys.create(
        ops.store, ops.settings, ops.actor, {"name": "past", "policy": {"expires_at": now - 60}}
    )
    keys.create(
        ops.store,
        ops.settings,
        ops.actor,
        {"name": "trap", "policy": {"honeytoken": True, "rotate_every": 1}},
    )
    gone = keys.create(
        ops.store, ops.settings, ops.actor, {"name": "gone", "policy": {"expires_at": now - 60}}
    )
    keys.revoke(ops.store, ops.actor, gone["id"])
    due = keys.due(ops.store, 7 * 86400)
    assert [(d["id"], d["reason"], d["overdue"]) for d in due] == [
        (past["id"], "expiry", True),
        (soon["id"], "rotation", False),
    ]
    assert all(d["due_at"].endswith("Z") for d in due) and due[1]["name"] == "soon"
    assert [d["id"] for d in keys.due(ops.store, 0)] == [past["id"]]
