"""``keygate objects``: which key owns each stored OpenAI object (files, batches, vector stores...).

``list`` shows the ownership records; ``assign ID --key KEY_ID`` gives an object keygate did not
create (or another key's) to a key; ``unassign ID`` leaves it to no key. Both are audited.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..ops import objects as ops
from . import _remote
from ._common import actor, local_store, print_json, print_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("objects", parents=[common], help="owners of stored objects (files, batches...)")
    ps = p.add_subparsers(dest="objects_command", required=True, metavar="ACTION")

    ls = ps.add_parser("list", parents=[common], help="list ownership records, newest first")
    ls.add_argument("--key", metavar="KEY_ID", help="only this key's")
    ls.add_argument("--kind", choices=ops.KINDS, help="only objects of this kind")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_objects, remote=True)

    a = ps.add_parser("assign", parents=[common], help="make a key the owner of an object")
    a.add_argument("id", metavar="ID", help="the object's id (file-..., batch_..., vs_..., ...)")
    a.add_argument("--key", metavar="KEY_ID", required=True)
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=assign, remote=True)

    u = ps.add_parser("unassign", parents=[common], help="leave an object to no key")
    u.add_argument("id", metavar="ID")
    u.add_argument("--json", action="store_true")
    u.set_defaults(handler=unassign, remote=True)


def list_objects(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        views: list[dict[str, Any]] = _remote.call(
            args, "GET", "/admin/objects", key=args.key, kind=args.kind
        )
    else:
        with local_store(args) as (_, store):
            views = ops.list_views(store, args.key, args.kind)
    if args.json:
        print_json(views)
    else:
        print_table(
            ["id", "kind", "key", "recorded"],
            [[v["id"], v["kind"], v["key_id"], v["recorded_at"]] for v in views],
        )
    return 0


def assign(args: argparse.Namespace) -> int:
    body = {"key_id": args.key}
    if _remote.is_remote(args):
        view = _remote.call(args, "POST", f"/admin/objects/{_remote.segment(args.id)}/assign", body)
    else:
        with local_store(args) as (_, store):
            view = ops.assign(store, actor(), args.id, body)
    print_json(view) if args.json else print(f"Assigned {view['id']} to {view['key_id']}.")
    return 0


def unassign(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        view = _remote.call(args, "POST", f"/admin/objects/{_remote.segment(args.id)}/unassign")
    else:
        with local_store(args) as (_, store):
            view = ops.unassign(store, actor(), args.id)
    print_json(view) if args.json else print(f"Unassigned {view['id']} (was {view['previous_key_id']}).")
    return 0
