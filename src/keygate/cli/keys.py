"""``keygate keys``: create, list, update and revoke client keys (``key_rotation``: rotate, due)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..ops import anomalies as anomaly_ops
from ..ops import keys as ops
from . import _remote, key_rotation
from ._common import actor, local_store, print_json, print_table, shown
from ._policy import add_policy_arguments, apply_policy, describe


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
    c.set_defaults(handler=create, remote=True)

    ls = ks.add_parser("list", parents=[common], help="list keys (never their secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_keys, remote=True)

    u = ks.add_parser("update", parents=[common], help="change a key's name, team or policy")
    u.add_argument("key_id", metavar="ID")
    u.add_argument("--name")
    u.add_argument("--team", metavar="TEAM", help="team id or name ('' to leave its team)")
    u.add_argument("--upstream", metavar="NAME", help="pin the key to this upstream ('' to unpin)")
    u.add_argument("--json", action="store_true")
    add_policy_arguments(u, update=True)
    key_rotation.add_update_arguments(u)
    u.set_defaults(handler=update, remote=True)

    r = ks.add_parser("revoke", parents=[common], help="revoke a key; effective on the next request")
    r.add_argument("key_id", metavar="ID")
    r.set_defaults(handler=revoke, remote=True)
    rel = ks.add_parser("release", parents=[common], help="end a key's quarantine (audited)")
    rel.add_argument("key_id", metavar="ID")
    rel.set_defaults(handler=release, remote=True)
    key_rotation.register(ks, common)


def _policy(args: argparse.Namespace, current: dict[str, Any]) -> dict[str, Any]:
    return key_rotation.apply(args, apply_policy(args, current))


def create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "policy": _policy(args, {})}
    for name in ("team", "upstream"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if _remote.is_remote(args):
        view = _remote.call(args, "POST", "/admin/keys", body)
    else:
        with local_store(args) as (settings, store):
            view = ops.create(store, settings, actor(), body)
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
            views = ops.list_views(store)
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
    remote = _remote.is_remote(args)
    path = f"/admin/keys/{_remote.segment(args.key_id)}"
    if remote:
        current = _remote.call(args, "GET", path)
        body = _changes(args, current["policy"])
        updated = _remote.call(args, "PATCH", path, body) if body else current
    else:
        with local_store(args) as (settings, store):
            record = ops.get(store, args.key_id)
            updated = ops.update(store, settings, actor(), args.key_id, _changes(args, record.policy))
    if args.json:
        print_json(updated)
    else:
        pinned = f", upstream {updated['upstream']}" if updated.get("upstream") else ""
        print(shown(f"Updated {updated['id']}: policy {describe(updated['policy'])}{pinned}"))
    return 0


def _changes(args: argparse.Namespace, policy: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    for name in ("team", "upstream"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name) or None
    new = _policy(args, policy)
    if new != policy:
        body["policy"] = new
    return body


def revoke(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        path = f"/admin/keys/{_remote.segment(args.key_id)}"
        was = _remote.call(args, "GET", path)["status"]
        _remote.call(args, "POST", path + "/revoke")
        changed = was != "revoked"
    else:
        with local_store(args) as (_, store):
            _, changed = ops.revoke(store, actor(), args.key_id)
    print(f"Revoked {args.key_id}." if changed else f"{args.key_id} was already revoked.")
    return 0


def release(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        result = _remote.call(args, "POST", f"/admin/keys/{_remote.segment(args.key_id)}/release")
    else:
        with local_store(args) as (_, store):
            result = anomaly_ops.release(store, actor(), args.key_id)
    print(f"Released {args.key_id}." if result["released"] else f"{args.key_id} was not quarantined.")
    return 0
