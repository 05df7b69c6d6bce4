"""``keygate usage``: requests and tokens per key, and spend against budget.

``estimated`` counts the requests whose tokens are their reservation: no usage was reported (the
client left, the stream was cut, the upstream went silent or answered no JSON).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InvalidRequest
from ..ops import usage as ops
from . import _remote
from ._common import local_store, print_json, print_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("usage", parents=[common], help="summarise recorded usage per key")
    p.add_argument("--key", metavar="ID", help="only this key")
    p.add_argument("--json", action="store_true")
    p.add_argument("--budgets", action="store_true", help="show spend against budget per key and team")
    p.set_defaults(handler=run, remote=True)


def run(args: argparse.Namespace) -> int:
    if args.budgets:
        if _remote.is_remote(args):
            raise InvalidRequest("--budgets: not available with --admin-url; run it on the gateway host")
        with local_store(args) as (settings, store):
            budgets = ops.budgets(settings, store)
        _print_budgets(budgets) if not args.json else print_json(budgets)
        return 0
    if _remote.is_remote(args):
        views: list[dict[str, Any]] = _remote.call(args, "GET", "/admin/usage", key=args.key)
    else:
        with local_store(args) as (_, store):
            views = ops.usage(store, args.key)
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["key", "name", "requests", "errors", "prompt", "completion", "total", "estimated", "last"],
        [
            [
                v["key_id"] or "(unauthenticated)",
                v["name"] or "-",
                str(v["requests"]),
                str(v["errors"]),
                str(v["prompt_tokens"]),
                str(v["completion_tokens"]),
                str(v["total_tokens"]),
                str(v.get("estimated", 0)),  # (an older admin API does not report it)
                v["last"],
            ]
            for v in views
        ],
    )
    return 0


def _print_budgets(views: list[dict[str, Any]]) -> None:
    print_table(
        ["scope", "id", "name", "budget", "period", "spent", "in flight", "used"],
        [
            [
                v["scope"],
                v["id"],
                v["name"],
                f"${v['budget']:g}" if v["kind"] == "usd" else f"{v['budget']:g} tokens",
                f"{v['period']} {v['period_key']}",
                f"{v['spent']:g}",
                f"{v['in_flight']:g}",
                f"{v['used_pct']}%",
            ]
            for v in views
        ],
    )
