"""Client keys: create, update, revoke and rotate them; list them and what is due.

Input is JSON-shaped: ``{"name", "team", "upstream", "policy"}`` (the CLI builds it from its
flags). Everything is validated before anything is written, and each change is stored with its
audit entry in one transaction, so a key either exists with its audit entry or not at all.
"""

from __future__ import annotations

import time
from typing import Any, Final

from .. import keys as keyfmt
from ..config import Settings
from ..errors import InvalidRequest, NotFound
from ..rotation import due_keys
from ..store import Store
from ..times import fmt_time, iso
from ..types import KeyRecord
from .audit import Actor
from .policy import validate_policy
from .upstreams import resolve_upstream
from .validate import check_name, check_object, check_ref
from .views import key_view

FIELDS: Final = frozenset({"name", "team", "upstream", "policy"})


def resolve_team(store: Store, ref: Any) -> str | None:
    """The id of the team ``ref`` names (id or name); None for no team."""
    team = check_ref(ref, "team")
    if team is None:
        return None
    found = store.get_team(team)
    if found is None:
        raise NotFound(f"no team with id or name {team!r}", param="team")
    return found.id


def get(store: Store, key_id: str) -> KeyRecord:
    record = store.get_key(key_id)
    if record is None:
        raise NotFound(f"no key with id {key_id[:80]!r}")
    return record


def list_views(store: Store) -> list[dict[str, Any]]:
    return [key_view(k) for k in store.list_keys()]


def create(store: Store, settings: Settings, actor: Actor, body: Any) -> dict[str, Any]:
    """A new key; its view carries the secret (``key``), the only time it is ever shown."""
    body = check_object(body, FIELDS, {"name"})
    name = check_name(body["name"])
    team_id = resolve_team(store, body.get("team"))
    upstream = resolve_upstream(settings, store, body.get("upstream"))
    policy = validate_policy(body.get("policy", {}))
    issued = keyfmt.issue(settings.pepper)
    record = KeyRecord(
        id=keyfmt.new_id("key"),
        name=name,
        key_hash=issued.key_hash,
        hint=issued.hint,
        created_at=time.time(),
        team_id=team_id,
        upstream=upstream,
        policy=policy,
    )
    audit = actor.record("keys.create", record.id, name=name, team=team_id, upstream=upstream, policy=policy)
    store.insert_key(record, audit)
    return {**key_view(record), "key": issued.secret}


def update(store: Store, settings: Settings, actor: Actor, key_id: str, body: Any) -> dict[str, Any]:
    """Change a key's name, team, pinned upstream or policy (which replaces the old one)."""
    body = check_object(body, FIELDS)
    current = get(store, key_id)
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = check_name(body["name"])
    if "team" in body:
        changes["team_id"] = resolve_team(store, body["team"])
    if "upstream" in body:
        changes["upstream"] = resolve_upstream(settings, store, body["upstream"])
    if "policy" in body:
        changes["policy"] = validate_policy(body["policy"])
    changes = {k: v for k, v in changes.items() if getattr(current, k) != v}
    if not changes:
        return key_view(current)
    updated = store.update_key(key_id, changes, actor.record("keys.update", key_id, changes=changes))
    if updated is None:
        raise NotFound(f"no key with id {key_id[:80]!r}")
    return key_view(updated)


def revoke(store: Store, actor: Actor, key_id: str) -> tuple[dict[str, Any], bool]:
    """Revoke a key (effective on its next request); the view, and whether it was active."""
    get(store, key_id)
    changed = store.revoke_key(key_id, time.time(), actor.record("keys.revoke", key_id))
    return key_view(get(store, key_id)), changed


def rotate(store: Store, settings: Settings, actor: Actor, key_id: str, grace: float) -> dict[str, Any]:
    """A new secret for the same key record; the old one works for ``grace`` more seconds."""
    record = get(store, key_id)
    if not record.active:
        raise InvalidRequest(f"{key_id} is revoked; create a new key instead")
    issued = keyfmt.issue(settings.pepper)
    now = time.time()
    policy = {**record.policy, "rotated_at": iso(now)}
    audit = actor.record("keys.rotate", record.id, grace_seconds=grace)
    store.rotate_key_secret(record.id, issued.key_hash, issued.hint, now + grace, policy, audit)
    return {
        "id": record.id,
        "name": record.name,
        "key": issued.secret,
        "hint": issued.hint,
        "old_valid_until": fmt_time(now + grace),
    }


def due(store: Store, window: float) -> list[dict[str, Any]]:
    """Keys due for rotation or expiry within ``window`` seconds (overdue ones too)."""
    now = time.time()
    return [
        {
            "id": d.key.id,
            "name": d.key.name,
            "reason": d.reason,
            "due_at": fmt_time(d.when),
            "overdue": d.when <= now,
        }
        for d in due_keys(store.list_keys(), now, window)
    ]
