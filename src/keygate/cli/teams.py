"""``keygate teams``: groups of keys sharing a policy (the stricter of key and team wins)."""

from __future__ import annotations

import argparse
from typing import Any

from ..ops import teams as ops
from . import _remote
from ._common import actor, local_store, print_json, print_table, shown
from ._policy import add_policy_arguments, apply_policy, describe


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("teams", parents=[common], help="manage teams")
    ts = p.add_subparsers(dest="teams_command", required=True, metavar="ACTION")

    c = ts.add_parser("create", parents=[common], help="create a team")
    c.add_argument("name")
    c.add_argument("--json", action="store_true")
    add_policy_arguments(c, update=False)
    c.set_defaults(handler=create, remote=True)

    ls = ts.add_parser("list", parents=[common], help="list teams")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_teams, remote=True)

    u = ts.add_parser("update", parents=[common], help="change a team's policy")
    u.add_argument("team", metavar="TEAM", help="team id or name")
    u.add_argument("--json", action="store_true")
    add_policy_arguments(u, update=True)
    u.set_defaults(handler=update, remote=True)


def create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "policy": apply_policy(args, {})}
    if _remote.is_remote(args):
        view = _remote.call(args, "POST", "/admin/teams", body)
    else:
        with local_store(args) as (_, store):
            view = ops.create(store, actor(), body)
    print_json(view) if args.json else print(f"Created team {view['id']} ({view['name']}).")
    return 0


def list_teams(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        views: list[dict[str, Any]] = _remote.call(args, "GET", "/admin/teams")
    else:
        with local_store(args) as (_, store):
            views = ops.list_views(store)
    if args.json:
        print_json(views)
    else:
        print_table(
            ["id", "name", "created", "policy"],
            [[v["id"], v["name"], v["created_at"], describe(v["policy"])] for v in views],
        )
    return 0


def update(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        path = f"/admin/teams/{_remote.segment(args.team)}"
        current = _remote.call(args, "GET", path)
        view = _remote.call(args, "PATCH", path, {"policy": apply_policy(args, current["policy"])})
    else:
        with local_store(args) as (_, store):
            team = ops.get(store, args.team)
            view = ops.update(store, actor(), team.id, {"policy": apply_policy(args, team.policy)})
    if args.json:
        print_json(view)
    else:
        print(shown(f"Updated {view['id']}: policy {describe(view['policy'])}"))
    return 0
