"""The ``keygate`` command. Each area registers its subcommands from its own module."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from ..config import process_env
from ..errors import ConfigError, KeygateError
from ..logs import redact
from . import (
    _limits,
    _policy,
    access_policy,
    admin_tokens,
    anomalies,
    audit,
    keys,
    master_key,
    migrate,
    objects,
    serve,
    teams,
    upstreams,
    usage,
)

AREAS = (serve, keys, teams, usage, upstreams, master_key, admin_tokens, audit, anomalies, objects, migrate)
POLICY_OPTIONS = (access_policy.OPTIONS, _limits.LimitOptions())


class _Parser(argparse.ArgumentParser):
    """Usage errors echo argv; a secret pasted there by mistake is masked, not repeated."""

    def error(self, message: str) -> NoReturn:
        super().error(redact(message))


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
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
    parser = _Parser(
        prog="keygate",
        description="A secure gateway for the OpenAI API.",
        parents=[common],
    )
    for options in POLICY_OPTIONS:
        if options not in _policy.GROUPS:
            _policy.GROUPS.append(options)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        area.register(sub, common)
    return parser


_POLICY_FIELD = re.compile(r"^policy\.([a-z_]+)(\.[a-z_]+)?: ")


def _as_flag(message: str) -> str:
    """A policy error from the operations layer, named by the flag that set the field
    (``policy.max_output_tokens: ...`` is ``--max-output-tokens: ...``)."""
    m = _POLICY_FIELD.match(message)
    if m is None:
        return message
    return f"--{m.group(1).replace('_', '-')}{m.group(2) or ''}: " + message[m.end() :]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one ``keygate`` command; ``env`` stands in for the process environment (tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.env = process_env() if env is None else env
    if not hasattr(args, "config"):
        args.config = None
    if not hasattr(args, "admin_url"):
        args.admin_url = None
    if args.admin_url and not getattr(args, "remote", False):
        # Never silently ignored: a command without an admin-API route would act on a local store.
        action = getattr(args, args.command.replace("-", "_") + "_command", None)
        name = f"{args.command} {action}" if action else args.command
        print(
            f"keygate: --admin-url: `{name}` works on the gateway host only (no admin API route)",
            file=sys.stderr,
        )
        return 2
    try:
        result: int = args.handler(args)
        return result
    except ConfigError as exc:
        print(f"keygate: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except KeygateError as exc:
        print(f"keygate: {_as_flag(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
