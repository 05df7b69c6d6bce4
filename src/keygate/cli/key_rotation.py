"""``keygate keys rotate`` / ``keys due``, and the ``--rotate-every`` / ``--honeytoken`` flags.

Rotation gives a key record a new secret (same id, policy, budget and usage history); the old
secret keeps working until the grace period ends. Schedules and honeytokens live in the key's
policy JSON (``rotate_every``, ``rotated_at``, ``honeytoken``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .. import keys as keyfmt
from ..errors import InvalidRequest, NotFound
from ..rotation import due_keys, parse_duration
from ._common import audit, fmt_time, local_store, print_json, print_table
from .upstreams import sql


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
        seconds = parse_duration(every, "--rotate-every")
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
        record = store.get_key(args.key_id)
        if record is None:
            raise NotFound(f"no key with id {args.key_id}")
        if not record.active:
            raise InvalidRequest(f"{args.key_id} is revoked; create a new key instead")
        issued = keyfmt.issue(settings.pepper)
        secret = issued.secret
        now = time.time()
        policy = {**record.policy, "rotated_at": now}
        sql(store).rotate_key_secret(
            record.id,
            issued.key_hash,
            issued.hint,
            now + grace,
            json.dumps(policy),
        )
        audit(store, "keys.rotate", record.id, grace_seconds=grace)
    if args.json:
        print_json(
            {
                "id": record.id,
                "key": secret,
                "hint": issued.hint,
                "old_valid_until": fmt_time(now + grace),
            }
        )
    else:
        print(f"Rotated key {record.id} ({record.name}). New secret:")
        print(f"\n    {secret}\n")
        print(f"The old secret keeps working until {fmt_time(now + grace)}.", file=sys.stderr)
    return 0


def due(args: argparse.Namespace) -> int:
    window = parse_duration(args.within, "--within")
    with local_store(args) as (_, store):
        records = store.list_keys()
    now = time.time()
    found = due_keys(records, now, window)
    views: list[dict[str, Any]] = [
        {
            "id": d.key.id,
            "name": d.key.name,
            "reason": d.reason,
            "due_at": fmt_time(d.when),
            "overdue": d.when <= now,
        }
        for d in found
    ]
    if args.json:
        print_json(views)
    else:
        print_table(
            ["id", "name", "reason", "due", "overdue"],
            [[v["id"], v["name"], v["reason"], v["due_at"], "yes" if v["overdue"] else "no"] for v in views],
        )
    return 0
