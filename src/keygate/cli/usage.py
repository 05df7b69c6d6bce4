"""``keygate usage``: requests and tokens per key."""

from __future__ import annotations

import argparse
from typing import Any

from . import _budgets, _remote
from ._common import local_store, print_json, print_table


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
    if _remote.is_remote(args):
        views: list[dict[str, Any]] = _remote.call(args, "GET", "/admin/usage", key=args.key)
    else:
        views = _local_views(args)
    if args.json:
        print_json(views)
        return 0
    _print(views)
    return 0


def _local_views(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ..admin.service import usage

    with local_store(args) as (_, store):
        return usage(store, args.key)


def _print(views: list[dict[str, Any]]) -> None:
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
