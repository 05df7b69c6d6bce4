"""``keygate keys``: create, list, update and revoke client keys."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .. import keys as keyfmt
from ..errors import InvalidRequest, NotFound
from ..store import Store
from ..types import KeyRecord
from . import _remote, key_rotation
from ._common import audit, fmt_time, local_store, print_json, print_table
from ._policy import add_policy_arguments, apply_policy, describe
from .upstreams import resolve_upstream


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("keys", parents=[common], help="manage client keys")
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    c = ks.add_parser("create", parents=[common], help="create a key; prints the secret once")
    c.add_argument("--name", required=True, help="what the key is for, e.g. billing-app")
    c.add_argument("--team", metavar="TEAM", help="team id or name the key belongs to")
    c.add_argument("--upstream", metavar="NAME", help="pin the key to this upstream")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    add_policy_arguments(c, update=False)
    key_rotation.add_create_arguments(c)
    c.set_defaults(handler=create)

    ls = ks.add_parser("list", parents=[common], help="list keys (never their secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_keys)

    u = ks.add_parser("update", parents=[common], help="change a key's name, team or policy")
    u.add_argument("key_id", metavar="ID")
    u.add_argument("--name")
    u.add_argument("--team", metavar="TEAM", help="team id or name ('' to leave its team)")
    u.add_argument("--upstream", metavar="NAME", help="pin the key to this upstream ('' to unpin)")
    u.add_argument("--json", action="store_true")
    add_policy_arguments(u, update=True)
    key_rotation.add_update_arguments(u)
    u.set_defaults(handler=update)

    r = ks.add_parser("revoke", parents=[common], help="revoke a key; effective on the next request")
    r.add_argument("key_id", metavar="ID")
    r.set_defaults(handler=revoke)
    key_rotation.register(ks, common)


def key_view(r: KeyRecord) -> dict[str, Any]:
    """The public view of a key record: everything but its hash."""
    return {
        "id": r.id,
        "name": r.name,
        "hint": r.hint,
        "status": r.status,
        "created_at": fmt_time(r.created_at),
        "last_used_at": fmt_time(r.last_used_at) if r.last_used_at else None,
        "team_id": r.team_id,
        "upstream": r.upstream,
        "policy": r.policy,
    }


def resolve_team(store: Store, team: str | None) -> str | None:
    if not team:
        return None
    found = store.get_team(team)
    if found is None:
        raise NotFound(f"no team with id or name {team}")
    return found.id


def create(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        _no_remote_upstream(args)
        body = {"name": args.name, "team": args.team, "policy": apply_policy(args, {})}
        view = _remote.call(args, "POST", "/admin/keys", body)
        return _show_created(args, view)
    with local_store(args) as (settings, store):
        issued = keyfmt.issue(settings.pepper)
        secret = issued.secret
        record = KeyRecord(
            id=keyfmt.new_id("key"),
            name=args.name,
            key_hash=issued.key_hash,
            hint=issued.hint,
            created_at=time.time(),
            team_id=resolve_team(store, args.team),
            upstream=resolve_upstream(settings, store, args.upstream),
            policy=key_rotation.apply(args, apply_policy(args, {})),
        )
        store.insert_key(record)
        audit(
            store,
            "keys.create",
            record.id,
            name=record.name,
            team=record.team_id,
            upstream=record.upstream,
            policy=record.policy,
        )
    return _show_created(args, {**key_view(record), "key": secret})


def _show_created(args: argparse.Namespace, view: dict[str, Any]) -> int:
    if args.json:
        print_json(view)
    else:
        print(f"Created key {view['id']} ({view['name']}).")
        print(f"\n    {view['key']}\n")
        print("Store it now: keygate keeps only a hash and cannot show it again.", file=sys.stderr)
    return 0


def list_keys(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        views: list[dict[str, Any]] = _remote.call(args, "GET", "/admin/keys")
    else:
        with local_store(args) as (_, store):
            views = [key_view(r) for r in store.list_keys()]
    if args.json:
        print_json(views)
        return 0
    rows = [
        [
            v["id"],
            v["name"],
            v["hint"],
            v["created_at"],
            v["last_used_at"] or "-",
            v["status"],
            v.get("upstream") or "-",
            describe(v["policy"]),
        ]
        for v in views
    ]
    print_table(["id", "name", "hint", "created", "last used", "status", "upstream", "policy"], rows)
    return 0


def update(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        return _update_remote(args)
    with local_store(args) as (settings, store):
        current = store.get_key(args.key_id)
        if current is None:
            raise NotFound(f"no key with id {args.key_id}")
        changes: dict[str, Any] = {}
        if args.name is not None:
            if not args.name:
                raise InvalidRequest("--name cannot be empty")
            changes["name"] = args.name
        if args.team is not None:
            changes["team_id"] = resolve_team(store, args.team)
        if args.upstream is not None:
            changes["upstream"] = resolve_upstream(settings, store, args.upstream)
        policy = key_rotation.apply(args, apply_policy(args, current.policy))
        if policy != current.policy:
            changes["policy"] = policy
        updated = store.update_key(args.key_id, **changes) if changes else current
        audit(store, "keys.update", args.key_id, changes=changes)
    assert updated is not None
    if args.json:
        print_json(key_view(updated))
    else:
        pinned = f", upstream {updated.upstream}" if updated.upstream else ""
        print(f"Updated {updated.id}: policy {describe(updated.policy)}{pinned}")
    return 0


def _no_remote_upstream(args: argparse.Namespace) -> None:
    if args.upstream is not None:
        raise InvalidRequest("--upstream: not available with --admin-url yet; run it on the gateway host")


def _update_remote(args: argparse.Namespace) -> int:
    _no_remote_upstream(args)
    path = f"/admin/keys/{_remote.segment(args.key_id)}"
    current = _remote.call(args, "GET", path)
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.team is not None:
        body["team"] = args.team or None
    policy = apply_policy(args, current["policy"])
    if policy != current["policy"]:
        body["policy"] = policy
    updated = _remote.call(args, "PATCH", path, body)
    if args.json:
        print_json(updated)
    else:
        print(f"Updated {updated['id']}: policy {describe(updated['policy'])}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        path = f"/admin/keys/{_remote.segment(args.key_id)}"
        was = _remote.call(args, "GET", path)["status"]
        _remote.call(args, "POST", path + "/revoke")
        changed = was != "revoked"
        print(f"Revoked {args.key_id}." if changed else f"{args.key_id} was already revoked.")
        return 0
    with local_store(args) as (_, store):
        if store.get_key(args.key_id) is None:
            raise NotFound(f"no key with id {args.key_id}")
        changed = store.revoke_key(args.key_id, time.time())
        if changed:
            audit(store, "keys.revoke", args.key_id)
    print(f"Revoked {args.key_id}." if changed else f"{args.key_id} was already revoked.")
    return 0
