"""``keygate migrate``: bring the database schema up to date, or copy SQLite into PostgreSQL.

``keygate migrate`` applies the migrations the configured database lacks (``serve`` does the same
at start-up; several instances may do it at once, see docs/deployment.md).
``keygate migrate --from sqlite:///keygate.db --to postgresql://USER@HOST:PORT/DB`` copies every
table (:mod:`keygate.ops.migrate`); run again, it copies nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..audit_chain import chain_key
from ..dburls import parse_database_url, without_password
from ..errors import ConfigError, InvalidRequest
from ..ops import migrate as ops
from ..store import open_url
from ._common import actor, print_json, settings_from


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "migrate", parents=[common], help="update the database schema, or copy SQLite into PostgreSQL"
    )
    p.add_argument("--from", dest="source", metavar="URL", help="copy from this sqlite:///PATH database")
    p.add_argument("--to", dest="target", metavar="URL", help="into this postgresql:// database")
    p.add_argument(
        "--into-non-empty",
        action="store_true",
        help="copy even into a database that holds rows of its own",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    key = chain_key(settings.pepper.reveal()) if settings.pepper else None
    if args.source is None and args.target is None:
        store = open_url(settings.database_url, args.env, "database_url", audit_key=key)  # migrates
        store.close()
        result: dict[str, Any] = {"database": settings.database_label, "schema": "up to date"}
        print_json(result) if args.json else print(f"{settings.database_label}: the schema is up to date.")
        return 0
    if args.source is None or args.target is None:
        raise InvalidRequest("--from and --to go together")
    parse_database_url(args.source, "--from")
    parse_database_url(args.target, "--to")
    if key is None:
        raise ConfigError(
            "keygate migrate --from/--to needs the pepper (KEYGATE_PEPPER or pepper_file): the audit"
            " trail is copied through the target's hash chain, which the pepper keys"
        )
    source = open_url(args.source, args.env, "--from", migrate=False, audit_key=key)
    try:
        source.migrate()  # an older file gets the columns the copy reads
        target = open_url(args.target, args.env, "--to", audit_key=key)
        try:
            label = args.source
            result = ops.copy(source, target, label, actor(), into_non_empty=args.into_non_empty)
        finally:
            target.close()
    finally:
        source.close()
    result["target"] = without_password(args.target)
    if args.json:
        print_json(result)
    elif not result["copied"]:
        print(f"Nothing to copy: {without_password(args.target)} has everything {label} holds.")
    else:
        rows = ", ".join(f"{n} {t}" for t, n in result["copied"].items())
        print(f"Copied {label} into {without_password(args.target)}: {rows}.")
    return 0
