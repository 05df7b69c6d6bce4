"""``keygate.ops.teams``: groups of keys sharing a policy."""

from __future__ import annotations

import pytest

from keygate.errors import Conflict, InvalidRequest, NotFound
from keygate.ops import teams

from .conftest import Ops


def test_create_list_view_and_update(ops: Ops) -> None:
    made = teams.create(
        ops.store, ops.actor, {"name": "research", "policy": {"rpm": 60, "models": ["gpt-4o"]}}
    )
    assert made["id"].startswith("team_") and made["created_at"].endswith("Z")
    assert made == {**made, "name": "research", "policy": {"rpm": 60, "models": ["gpt-4o"]}}
    assert teams.list_views(ops.store) == [made]
    assert teams.view(ops.store, "research") == teams.view(ops.store, made["id"]) == made
    assert teams.get(ops.store, made["id"]).name == "research"
    plain = teams.create(ops.store, ops.actor, {"name": "plain"})
    assert plain["policy"] == {}
    updated = teams.update(ops.store, ops.actor, "research", {"policy": {"tpm": 100}})
    assert updated["policy"] == {"tpm": 100} and updated["id"] == made["id"]  # replaced, not merged
    assert [(e.action, e.target) for e in ops.audit()] == [
        ("teams.create", made["id"]),
        ("teams.create", plain["id"]),
        ("teams.update", made["id"]),
    ]
    assert ops.audit("teams.update")[0].details == {"policy": {"tpm": 100}}


def test_refusals_write_nothing(ops: Ops) -> None:
    teams.create(ops.store, ops.actor, {"name": "research"})
    before = (ops.store.list_teams(), ops.store.list_audit())
    with pytest.raises(Conflict) as dup:
        teams.create(ops.store, ops.actor, {"name": "research"})
    assert dup.value.param == "name" and dup.value.status == 409
    for body, param in (
        ({}, "name"),
        ({"name": "x", "keys": []}, "keys"),
        ({"name": "\x85"}, "name"),
        ({"name": "x", "policy": {"routes": ["admin"]}}, "policy"),
        (None, None),
    ):
        with pytest.raises(InvalidRequest) as info:
            teams.create(ops.store, ops.actor, body)
        assert info.value.param == param
    for body in ({}, {"policy": {"rpm": "ten"}}, {"policy": {}, "name": "x"}):
        with pytest.raises(InvalidRequest):
            teams.update(ops.store, ops.actor, "research", body)
    with pytest.raises(NotFound, match="no team with id or name 'blue'"):
        teams.update(ops.store, ops.actor, "blue", {"policy": {}})
    with pytest.raises(NotFound):
        teams.view(ops.store, "blue")
    assert (ops.store.list_teams(), ops.store.list_audit()) == before
