"""``keygate usage``: requests and tokens per key."""

from __future__ import annotations

import argparse
from typing import Any

from . import _budgets
from ._common import fmt_time, local_store, print_json, print_table


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("usage", parents=[common], help="summarise recorded usage per key")
    p.add_argument("--key", metavar="ID", help="only this key")
    p.add_argument("--json", action="store_true")
    p.add_argument("--budgets", action="store_true", help="show spend against budget per key and team")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.budgets:
        with local_store(args) as (settings, store):
            _budgets.show(settings, store, args.json)
        return 0
    with local_store(args) as (_, store):
        summaries = store.usage_summary(args.key)
        names = {k.id: k.name for k in store.list_keys()}
    views: list[dict[str, Any]] = [
        {
            "key_id": s.key_id,
            "name": names.get(s.key_id or ""),
            "requests": s.requests,
            "errors": s.errors,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "total_tokens": s.total_tokens,
            "first": fmt_time(s.first_ts),
            "last": fmt_time(s.last_ts),
        }
        for s in summaries
    ]
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["key", "name", "requests", "errors", "prompt", "completion", "total", "last"],
        [
            [
                v["key_id"] or "(unauthenticated)",
                v["name"] or "-",
                str(v["requests"]),
                str(v["errors"]),
                str(v["prompt_tokens"]),
                str(v["completion_tokens"]),
                str(v["total_tokens"]),
                v["last"],
            ]
            for v in views
        ],
    )
    return 0
