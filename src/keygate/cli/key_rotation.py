"""``keygate keys rotate`` / ``keys due``, and the ``--rotate-every`` / ``--honeytoken`` flags.

Rotation gives a key record a new secret (same id, policy, budget and usage history); the old
secret keeps working until the grace period ends. Schedules and honeytokens live in the key's
policy JSON (``rotate_every``, ``rotated_at``, ``honeytoken``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..ops import keys as ops
from ..times import parse_duration
from ._common import actor, local_store, print_json, print_table


def add_create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--honeytoken",
        action="store_true",
        help="a key no one should use: any use is refused and raises a high-severity alert",
    )
    add_update_arguments(p)


def add_update_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rotate-every", metavar="DURATION", help="rotation schedule, e.g. 30d ('0' clears it)")


def apply(args: argparse.Namespace, policy: dict[str, Any]) -> dict[str, Any]:
    out = dict(policy)
    if getattr(args, "honeytoken", False):
        out["honeytoken"] = True
    every = getattr(args, "rotate_every", None)
    if every is not None:
        seconds = round(parse_duration(every, "--rotate-every"))
        if seconds:
            out["rotate_every"] = seconds
        else:
            out.pop("rotate_every", None)
    return out


def register(ks: Any, common: argparse.ArgumentParser) -> None:
    r = ks.add_parser("rotate", parents=[common], help="issue a new secret for a key; prints it once")
    r.add_argument("key_id", metavar="ID")
    r.add_argument(
        "--grace", default="24h", help="how long the old secret keeps working (default 24h; 0 = now)"
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=rotate)

    d = ks.add_parser("due", parents=[common], help="keys due for rotation or expiry")
    d.add_argument("--within", default="7d", help="look this far ahead (default 7d)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(handler=due)


def rotate(args: argparse.Namespace) -> int:
    grace = parse_duration(args.grace, "--grace")
    with local_store(args) as (settings, store):
        view = ops.rotate(store, settings, actor(), args.key_id, grace)
    if args.json:
        print_json({k: view[k] for k in ("id", "key", "hint", "old_valid_until")})
    else:
        print(f"Rotated key {view['id']} ({view['name']}). New secret:")
        print(f"\n    {view['key']}\n")
        print(f"The old secret keeps working until {view['old_valid_until']}.", file=sys.stderr)
    return 0


def due(args: argparse.Namespace) -> int:
    window = parse_duration(args.within, "--within")
    with local_store(args) as (_, store):
        views = ops.due(store, window)
    if args.json:
        print_json(views)
    else:
        print_table(
            ["id", "name", "reason", "due", "overdue"],
            [[v["id"], v["name"], v["reason"], v["due_at"], "yes" if v["overdue"] else "no"] for v in views],
        )
    return 0
