"""``keygate upstreams``: store upstream keys (encrypted), list them, rotate, retire, re-enable them.

Secrets are write-only: read from stdin or a no-echo prompt, sealed with the master key, and never
printed again; listings show the last 4 characters and a fingerprint.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..ops import upstreams as ops
from ..times import parse_duration
from ._common import actor, local_store, print_json, print_table
from ._secret_input import read_secret


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("upstreams", parents=[common], help="manage upstream APIs and their keys")
    us = p.add_subparsers(dest="upstreams_command", required=True, metavar="ACTION")

    a = us.add_parser("add", parents=[common], help="store a key for an upstream (read from stdin/prompt)")
    a.add_argument("name", metavar="NAME")
    _upstream_flags(a)
    a.set_defaults(handler=add)

    ls = us.add_parser("list", parents=[common], help="list upstream keys (never their secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_upstreams)

    r = us.add_parser("rotate", parents=[common], help="add a new key; older keys retire after --grace")
    r.add_argument("name", metavar="NAME")
    r.add_argument("--grace", default="1h", help="how long old keys stay as a last resort (default 1h)")
    _upstream_flags(r)
    r.set_defaults(handler=rotate)

    t = us.add_parser("retire", parents=[common], help="retire (and wipe) keys now")
    t.add_argument("name", metavar="NAME")
    t.add_argument("key_id", metavar="KEY_ID", nargs="?", help="one key (default: every retiring key)")
    t.set_defaults(handler=retire)

    e = us.add_parser(
        "enable", parents=[common], help="put a key rejected by the upstream (401/403) back into rotation"
    )
    e.add_argument("name", metavar="NAME")
    e.add_argument("key_id", metavar="KEY_ID", help="a stored key id, or NAME#i for a config key")
    e.set_defaults(handler=enable)


def _upstream_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", help="the upstream's base URL (new upstreams only)")
    p.add_argument("--allow-insecure", action="store_true", help="allow http to a non-loopback host")
    p.add_argument("--fallback", metavar="NAME", help="upstream to use when all keys are out")
    p.add_argument("--ca-bundle", metavar="PEM", help="extra CA certificates to trust for this upstream")
    p.add_argument("--key-stdin", action="store_true", help="read the key from stdin (else a hidden prompt)")


def _store_key(args: argparse.Namespace, grace: float | None) -> int:
    with local_store(args) as (settings, store):
        ops.keyring_for(settings)  # no master key: say so before asking for the secret
        who = actor()
        ops.define(
            settings,
            store,
            who,
            args.name,
            base_url=args.base_url,
            allow_insecure=args.allow_insecure,
            fallback=args.fallback,
            ca_bundle=args.ca_bundle,
        )
        view = ops.store_key(settings, store, who, args.name, read_secret(args.key_stdin), grace)
    print(
        f"Stored key {view['key_id']} for upstream {args.name} (...{view['last4']}, {view['fingerprint']})."
    )
    if grace is not None:
        print(f"Traffic moves to it now; older keys retire at {view['others_retire_at']}.")
    return 0


def add(args: argparse.Namespace) -> int:
    return _store_key(args, None)


def rotate(args: argparse.Namespace) -> int:
    return _store_key(args, parse_duration(args.grace, "--grace"))


def retire(args: argparse.Namespace) -> int:
    with local_store(args) as (_, store):
        retired = ops.retire(store, actor(), args.name, args.key_id)
    print(f"Retired {len(retired)} key(s) of {args.name}: " + (", ".join(retired) or "none"))
    return 0


def enable(args: argparse.Namespace) -> int:
    with local_store(args) as (settings, store):
        ops.enable(settings, store, actor(), args.name, args.key_id)
    print(f"Key {args.key_id} of {args.name} goes back into rotation on running gateways.")
    return 0


def list_upstreams(args: argparse.Namespace) -> int:
    with local_store(args) as (settings, store):
        views = ops.views(settings, store)
    if args.json:
        print_json(views)
        return 0
    print_table(
        ["upstream", "key", "source", "last4", "fingerprint", "created", "last used", "status"],
        [
            [
                v["upstream"],
                v["key_id"],
                v["source"],
                v["last4"] or "-",
                v["fingerprint"] or "-",
                v["created_at"] or "-",
                v["last_used_at"] or "-",
                v["status"],
            ]
            for v in views
        ],
    )
    return 0
