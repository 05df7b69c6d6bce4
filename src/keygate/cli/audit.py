"""``keygate audit``: list the audit trail, verify its hash chain, print an anchor.

``keygate audit verify`` exits 1 when the chain is broken (naming the first entry at fault) and
sends the ``audit_verify_failed`` alert to the sinks of ``alerts:`` (waiting up to 5 s for it to
be delivered); ``keygate audit anchor`` prints ``SEQ:HASH`` to keep elsewhere, for ``verify
--anchor``. Each also works with ``--admin-url`` (the alert is then sent by the gateway).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from ..alerts import Alerter
from ..ops import audit_log as ops
from . import _remote
from ._common import local_store, print_json, print_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("audit", parents=[common], help="list the audit trail; verify its hash chain")
    _list_options(p)
    p.set_defaults(handler=list_entries, remote=True)
    acts = p.add_subparsers(dest="audit_command", metavar="ACTION")
    ls = acts.add_parser("list", parents=[common], help="list entries, newest first (the default)")
    _list_options(ls)
    ls.set_defaults(handler=list_entries, remote=True)
    v = acts.add_parser("verify", parents=[common], help="check the whole chain; exit 1 if it was altered")
    v.add_argument("--anchor", metavar="SEQ:HASH", help="an anchor printed earlier by `keygate audit anchor`")
    v.add_argument("--json", action="store_true")
    v.set_defaults(handler=verify, remote=True)
    a = acts.add_parser(
        "anchor", parents=[common], help="print the chain's head (SEQ:HASH) to keep elsewhere"
    )
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=anchor, remote=True)


def _list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="WHEN", help="ISO time, epoch seconds, or a duration back (24h)")
    p.add_argument("--action", metavar="NAME", help="exact action, or a prefix ending in . or * (keys.)")
    p.add_argument("--actor", metavar="ID", help="adm_..., cli:USER, key:ID, gateway...")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N entries (default 100)")
    p.add_argument("--json", action="store_true")


def list_entries(args: argparse.Namespace) -> int:
    filters = {"action": args.action, "actor": args.actor, "since": args.since}
    if _remote.is_remote(args):
        views: list[dict[str, Any]] = _remote.call(
            args, "GET", "/admin/audit", limit=str(args.limit), **filters
        )
    else:
        with local_store(args) as (_, store):
            views = ops.entries(store, args.limit, **filters)
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["seq", "time", "actor", "origin", "action", "target", "details"],
        [
            [
                str(v["id"]),
                v["ts"],
                v["actor"],
                v["origin"],
                v["action"],
                v["target"],
                json.dumps(v["details"], ensure_ascii=False, separators=(",", ":"))[:120],
            ]
            for v in views
        ],
    )
    return 0


def verify(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        result: dict[str, Any] = _remote.call(args, "GET", "/admin/audit/verify", anchor=args.anchor)
    else:
        with local_store(args) as (settings, store):
            alerter = Alerter(settings.alerts)

            def alert(found: Mapping[str, Any]) -> None:
                alerter.emit(
                    "audit_verify_failed",
                    problem=found["problem"],
                    seq=found["seq"],
                    message=found["message"],
                    database=str(settings.database_path),
                    by="cli",
                )

            try:
                result = ops.verify(settings, store, args.anchor, on_failure=alert)
            finally:
                alerter.close(timeout=5.0)
    if args.json:
        print_json(result)
    elif result["ok"]:
        print(
            f"audit chain intact: {result['message']}; head {result['head']['seq']}:{result['head']['hash']}"
        )
    else:
        print(f"keygate: audit chain BROKEN: {result['message']}", file=sys.stderr)
    return 0 if result["ok"] else 1


def anchor(args: argparse.Namespace) -> int:
    if _remote.is_remote(args):
        view: dict[str, Any] = _remote.call(args, "GET", "/admin/audit/anchor")
    else:
        with local_store(args) as (_, store):
            view = ops.anchor(store)
    print_json(view) if args.json else print(view["anchor"])
    return 0
