"""``keygate admin-tokens`` and ``keygate init``: credentials for the admin API.

A token's secret is printed once, by the command that creates it, on that command's own output;
keygate keeps only its HMAC hash.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..ops import tokens as ops
from ._common import actor, local_store, print_json, print_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    init = sub.add_parser(
        "init", parents=[common], help="create the database and print the first admin token once"
    )
    init.add_argument("--json", action="store_true")
    init.set_defaults(handler=run_init)

    p = sub.add_parser("admin-tokens", parents=[common], help="manage admin API tokens")
    ts = p.add_subparsers(dest="admin_tokens_command", required=True, metavar="ACTION")

    c = ts.add_parser("create", parents=[common], help="issue a token; prints the secret once")
    c.add_argument("--role", required=True, choices=ops.ROLES)
    c.add_argument("--name", help="what the token is for (default: the role)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(handler=create)

    ls = ts.add_parser("list", parents=[common], help="list admin tokens (never their secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_tokens)

    r = ts.add_parser("revoke", parents=[common], help="revoke a token; effective on its next request")
    r.add_argument("token_id", metavar="ID")
    r.set_defaults(handler=revoke)


def _show(args: argparse.Namespace, view: dict[str, Any]) -> None:
    if args.json:
        print_json(view)
        return
    print(f"Created admin token {view['id']} (role {view['role']}).")
    print(f"\n    {view['token']}\n")
    print("Store it now: keygate keeps only a hash and cannot show it again.", file=sys.stderr)


def run_init(args: argparse.Namespace) -> int:
    with local_store(args) as (settings, store):
        if ops.has_admin(store):
            if args.json:
                print_json({"database": settings.database_label, "created": False})
            else:
                print(f"keygate is initialised ({settings.database_label}); an admin token exists already.")
            return 0
        view = ops.create(store, settings.pepper, actor(), {"role": "admin", "name": "first admin"})
    _show(args, view)
    return 0


def create(args: argparse.Namespace) -> int:
    body = {"role": args.role, "name": args.name or args.role}
    with local_store(args) as (settings, store):
        view = ops.create(store, settings.pepper, actor(), body)
    _show(args, view)
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    with local_store(args) as (_, store):
        views = ops.list_views(store)
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["id", "name", "hint", "role", "created", "status"],
        [[v["id"], v["name"], v["hint"], v["role"], v["created_at"], v["status"]] for v in views],
    )
    return 0


def revoke(args: argparse.Namespace) -> int:
    with local_store(args) as (_, store):
        _, changed = ops.revoke(store, actor(), args.token_id)
    print(f"Revoked {args.token_id}." if changed else f"{args.token_id} was already revoked.")
    return 0
