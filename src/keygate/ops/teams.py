"""Teams: groups of keys sharing a policy (the stricter of key and team policy wins)."""

from __future__ import annotations

import time
from typing import Any

from .. import keys as keyfmt
from ..errors import Conflict, NotFound
from ..store import Store
from ..types import Team
from .audit import Actor
from .policy import validate_policy
from .validate import check_name, check_object
from .views import team_view


def get(store: Store, ref: str) -> Team:
    team = store.get_team(ref)
    if team is None:
        raise NotFound(f"no team with id or name {ref[:80]!r}")
    return team


def list_views(store: Store) -> list[dict[str, Any]]:
    return [team_view(t) for t in store.list_teams()]


def view(store: Store, ref: str) -> dict[str, Any]:
    return team_view(get(store, ref))


def create(store: Store, actor: Actor, body: Any) -> dict[str, Any]:
    body = check_object(body, {"name", "policy"}, {"name"})
    name = check_name(body["name"])
    policy = validate_policy(body.get("policy", {}))
    if store.get_team(name) is not None:
        raise Conflict(f"a team named {name!r} exists already", param="name")
    team = Team(keyfmt.new_id("team"), name, time.time(), policy)
    store.insert_team(team, actor.record("teams.create", team.id, name=name, policy=policy))
    return team_view(team)


def update(store: Store, actor: Actor, ref: str, body: Any) -> dict[str, Any]:
    """Replace a team's policy."""
    body = check_object(body, {"policy"}, {"policy"})
    policy = validate_policy(body["policy"])
    team = get(store, ref)
    updated = store.update_team(team.id, policy, actor.record("teams.update", team.id, policy=policy))
    if updated is None:
        raise NotFound(f"no team with id or name {ref[:80]!r}")
    return team_view(updated)
