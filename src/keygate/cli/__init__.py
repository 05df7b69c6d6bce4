"""The ``keygate`` command. Each area registers its subcommands from its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ConfigError, KeygateError
from . import admin_tokens, keys, serve, teams, usage

AREAS = (serve, keys, teams, usage, admin_tokens)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML config file (default: $KEYGATE_CONFIG, else built-in defaults)",
    )
    common.add_argument(
        "--admin-url",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="send keys/teams/usage commands to this admin API (token from $KEYGATE_ADMIN_TOKEN)",
    )
    parser = argparse.ArgumentParser(
        prog="keygate",
        description="A secure gateway for the OpenAI API.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        area.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    if not hasattr(args, "admin_url"):
        args.admin_url = None
    try:
        result: int = args.handler(args)
        return result
    except ConfigError as exc:
        print(f"keygate: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except KeygateError as exc:
        print(f"keygate: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
