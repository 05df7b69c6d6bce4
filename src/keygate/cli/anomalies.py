"""``keygate anomalies``: what the behavioural analytics reported, and acknowledging it.

``keygate keys release KEY_ID`` (in cli/keys.py) ends a quarantine.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..ops import anomalies as ops
from . import _remote
from ._common import actor, local_store, print_json, print_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("anomalies", parents=[common], help="anomaly events of the behavioural analytics")
    p.add_argument("--key", metavar="ID", help="only this key's events")
    p.add_argument("--since", metavar="WHEN", help="a duration back from now (1h, 7d) or an ISO 8601 time")
    p.add_argument("--limit", type=int, default=100, help="at most this many, newest first (default 100)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run, remote=True)
    acts = p.add_subparsers(dest="anomalies_command", metavar="ACTION")
    a = acts.add_parser("ack", parents=[common], help="acknowledge an event (audited)")
    a.add_argument("event_id", metavar="ID")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=ack, remote=True)


def run(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        views: list[dict[str, Any]] = _remote.call(
            args, "GET", "/admin/anomalies", key=args.key, since=args.since, limit=str(args.limit)
        )
    else:
        with local_store(args) as (_, store):
            views = ops.list_events(store, args.key, args.since, args.limit)
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["id", "time", "detector", "key", "subject", "score", "action", "acked", "evidence"],
        [
            [
                v["id"],
                v["time"],
                v["detector"],
                v["key_id"] or "-",
                v["subject"],
                f"{v['score']:g}",
                v["action"] if v["acted"] else f"{v['action']} (observed)",
                v["acked_by"] or "-",
                json.dumps(v["evidence"], separators=(",", ":"))[:120],
            ]
            for v in views
        ],
    )
    return 0


def ack(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        view = _remote.call(args, "POST", f"/admin/anomalies/{_remote.segment(args.event_id)}/ack")
    else:
        with local_store(args) as (_, store):
            view = ops.ack(store, actor(), args.event_id)
    if args.json:
        print_json(view)
    else:
        print(f"Acknowledged {view['id']} ({view['detector']}, by {view['acked_by']}).")
    return 0
