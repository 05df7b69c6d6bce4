"""Admin operations on the store: validate input, change state, write the audit trail.

Every function takes the acting principal (token id) and origin (client IP) and records one
audit entry per change. Secrets never reach the audit details: they are built from the change
itself (never from the created secret) and passed through :func:`keygate.logs.redact`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Set
from dataclasses import dataclass
from typing import Any, Final

from .. import keys as keyfmt
from ..cli._common import fmt_time
from ..cli.keys import key_view
from ..cli.teams import team_view
from ..config import Settings
from ..errors import Conflict, InvalidRequest, NotFound
from ..logs import redact
from ..policies import validate_policy
from ..store import Store
from ..types import KeyRecord, Team
from . import tokens

NAME_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it, and from where: a token id and the client IP of the request."""

    id: str
    origin: str


def audit(store: Store, actor: Actor, action: str, target: str, **details: Any) -> None:
    # stdlib json, not orjson: a policy may hold integers beyond 64 bits.
    raw = json.dumps(details, default=str, ensure_ascii=False)
    store.write_audit(time.time(), actor.id, action, target, actor.origin, redact(raw))


# -- input checks (they mirror the schemas in openapi.py) --------------------------------------


def check_object(body: Any, allowed: Set[str], required: Set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    missing = required - set(body)
    if missing:
        raise InvalidRequest(f"missing field {sorted(missing)[0]!r}", param=sorted(missing)[0])
    return body


def check_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_MAX:
        raise InvalidRequest(
            f"{field} must be a non-blank string of at most {NAME_MAX} characters", param=field
        )
    return value


def check_policy(value: Any) -> dict[str, Any]:
    return validate_policy(value)


def check_team_ref(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > NAME_MAX):
        raise InvalidRequest(f"team must be a team id or name (at most {NAME_MAX} characters)", param="team")
    return value


def resolve_team(store: Store, team: str | None) -> str | None:
    if not team:
        return None
    found = store.get_team(team)
    if found is None:
        raise NotFound("no team with that id or name", param="team")
    return found.id


# -- keys --------------------------------------------------------------------------------------


def create_key(store: Store, settings: Settings, actor: Actor, body: Any) -> dict[str, Any]:
    body = check_object(body, {"name", "team", "policy"}, {"name"})
    name = check_name(body["name"])
    team_id = resolve_team(store, check_team_ref(body.get("team")))
    policy = check_policy(body.get("policy", {}))
    issued = keyfmt.issue(settings.pepper)
    secret = issued.secret
    record = KeyRecord(
        id=keyfmt.new_id("key"),
        name=name,
        key_hash=issued.key_hash,
        hint=issued.hint,
        created_at=time.time(),
        team_id=team_id,
        policy=policy,
    )
    store.insert_key(record)
    audit(store, actor, "keys.create", record.id, name=name, team=team_id, policy=policy)
    return {**key_view(record), "key": secret}


def get_key(store: Store, key_id: str) -> KeyRecord:
    record = store.get_key(key_id)
    if record is None:
        raise NotFound("no key with that id")
    return record


def update_key(store: Store, actor: Actor, key_id: str, body: Any) -> dict[str, Any]:
    body = check_object(body, {"name", "team", "policy"})
    current = get_key(store, key_id)
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = check_name(body["name"])
    if "team" in body:
        changes["team_id"] = resolve_team(store, check_team_ref(body["team"]))
    if "policy" in body:
        changes["policy"] = check_policy(body["policy"])
    updated = store.update_key(key_id, **changes) if changes else current
    assert updated is not None
    audit(store, actor, "keys.update", key_id, changes=changes)
    return key_view(updated)


def revoke_key(store: Store, actor: Actor, key_id: str) -> dict[str, Any]:
    get_key(store, key_id)
    if store.revoke_key(key_id, time.time()):
        audit(store, actor, "keys.revoke", key_id)
    return key_view(get_key(store, key_id))


# -- teams -------------------------------------------------------------------------------------


def create_team(store: Store, actor: Actor, body: Any) -> dict[str, Any]:
    body = check_object(body, {"name", "policy"}, {"name"})
    name = check_name(body["name"])
    policy = check_policy(body.get("policy", {}))
    if store.get_team(name) is not None:
        raise Conflict("a team with that name exists already", param="name")
    team = Team(keyfmt.new_id("team"), name, time.time(), policy)
    store.insert_team(team)
    audit(store, actor, "teams.create", team.id, name=name, policy=policy)
    return team_view(team)


def get_team(store: Store, ref: str) -> Team:
    team = store.get_team(ref)
    if team is None:
        raise NotFound("no team with that id or name")
    return team


def update_team(store: Store, actor: Actor, ref: str, body: Any) -> dict[str, Any]:
    body = check_object(body, {"policy"}, {"policy"})
    policy = check_policy(body["policy"])
    team = get_team(store, ref)
    updated = store.update_team(team.id, policy)
    assert updated is not None
    audit(store, actor, "teams.update", team.id, policy=policy)
    return team_view(updated)


# -- usage, audit, admin tokens ----------------------------------------------------------------


def usage(store: Store, key_id: str | None) -> list[dict[str, Any]]:
    names = {k.id: k.name for k in store.list_keys()}
    return [
        {
            "key_id": s.key_id,
            "name": names.get(s.key_id or ""),
            "requests": s.requests,
            "errors": s.errors,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "total_tokens": s.total_tokens,
            "first": fmt_time(s.first_ts),
            "last": fmt_time(s.last_ts),
        }
        for s in store.usage_summary(key_id)
    ]


def audit_entries(store: Store, limit: int, action: str | None) -> list[dict[str, Any]]:
    return [
        {
            "id": e.id,
            "ts": fmt_time(e.ts),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "origin": e.origin,
            "details": e.details,
        }
        for e in store.list_audit(limit, action)
    ]


def create_token(store: Store, settings: Settings, actor: Actor, body: Any) -> dict[str, Any]:
    body = check_object(body, {"role", "name"}, {"role"})
    role = body["role"]
    if role not in tokens.ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(tokens.ROLES)}", param="role")
    name = check_name(body.get("name", role))
    token, secret = tokens.issue(store, settings.pepper, role, name)
    audit(store, actor, "admin_tokens.create", token.id, role=role, name=name)
    return {**tokens.token_view(token), "token": secret}


def revoke_token(store: Store, actor: Actor, token_id: str) -> dict[str, Any]:
    if store.get_admin_token(token_id) is None:
        raise NotFound("no admin token with that id")
    if store.revoke_admin_token(token_id, time.time()):
        audit(store, actor, "admin_tokens.revoke", token_id)
    token = store.get_admin_token(token_id)
    assert token is not None
    return tokens.token_view(token)
