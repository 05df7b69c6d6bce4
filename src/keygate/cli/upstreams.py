"""``keygate upstreams``: store upstream keys (encrypted), list them, rotate and retire them.

Secrets are write-only: read from stdin or a no-echo prompt, sealed with the master key
(:mod:`keygate.vault`), and never printed again; listings show the last 4 characters and a
fingerprint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .. import keys as keyfmt
from ..config import Settings, check_base_url
from ..errors import ConfigError, InvalidRequest, NotFound
from ..rotation import parse_duration
from ..store import SQLiteStore, Store
from ..store.secrets_sql import UpstreamDef, UpstreamKeyRow
from ..vault import Keyring, fingerprint
from ._common import audit, fmt_time, local_store, print_json, print_table
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


def sql(store: Store) -> SQLiteStore:
    """The store, with its upstream-secret tables (SQLite is the only store so far)."""
    assert isinstance(store, SQLiteStore)
    return store


def resolve_upstream(settings: Settings, store: Store, name: str | None) -> str | None:
    """A client key's pinned upstream: a configured or stored upstream; '' or None means none."""
    if not name:
        return None
    known = set(settings.upstreams) | {d.name for d in sql(store).list_upstream_defs()}
    if name not in known:
        raise InvalidRequest(f"--upstream: no upstream named {name!r} (known: {', '.join(sorted(known))})")
    return name


def keyring_for(settings: Settings) -> Keyring:
    ring = Keyring.from_secrets(settings.master_key, settings.previous_master_key)
    if ring is None:
        raise ConfigError(
            "master key: storing upstream keys needs a master key "
            "(set KEYGATE_MASTER_KEY or master_key_file; see keygate master-key generate)"
        )
    return ring


def _ensure_upstream(settings: Settings, store: SQLiteStore, args: argparse.Namespace) -> None:
    name = args.name
    if name in settings.upstreams:
        configured = settings.upstreams[name]
        if args.base_url and args.base_url.rstrip("/") != configured.base_url:
            raise InvalidRequest(f"upstream {name} is defined in the config file with another base URL")
        return
    existing = {d.name: d for d in store.list_upstream_defs()}
    current = existing.get(name)
    if current is None and not args.base_url:
        raise InvalidRequest(f"upstream {name} is new: give its --base-url")
    known = set(settings.upstreams) | set(existing)
    if args.fallback and (args.fallback not in known or args.fallback == name):
        raise InvalidRequest(f"--fallback: {args.fallback} is not another upstream")
    if args.ca_bundle and not Path(args.ca_bundle).is_file():
        raise InvalidRequest(f"--ca-bundle: {args.ca_bundle} is not a readable PEM file")
    insecure = args.allow_insecure or (current.allow_insecure if current else False)
    base = args.base_url or (current.base_url if current else "")
    definition = UpstreamDef(
        name,
        check_base_url(base, "--base-url", insecure),
        insecure,
        args.fallback or (current.fallback if current else None),
        str(Path(args.ca_bundle).resolve()) if args.ca_bundle else (current.ca_bundle if current else None),
        current.created_at if current else time.time(),
    )
    if definition != current:
        store.put_upstream_def(definition)


def _store_key(args: argparse.Namespace, grace: float | None) -> int:
    with local_store(args) as (settings, any_store):
        store = sql(any_store)
        ring = keyring_for(settings)
        _ensure_upstream(settings, store, args)
        secret = read_secret(args.key_stdin)
        key_id = keyfmt.new_id("uk")
        now = time.time()
        value = secret.reveal()
        row = UpstreamKeyRow(
            key_id,
            args.name,
            value[-4:],
            fingerprint(value),
            now,
            None,
            "active",
            None,
            ring.seal(args.name, key_id, value),
        )
        store.insert_upstream_key(row, retire_others_at=None if grace is None else now + grace)
        action = "upstreams.add" if grace is None else "upstreams.rotate"
        audit(store, action, key_id, upstream=args.name, fingerprint=row.fingerprint)
    print(f"Stored key {key_id} for upstream {args.name} (...{row.last4}, {row.fingerprint}).")
    if grace is not None:
        print(f"Traffic moves to it now; older keys retire at {fmt_time(now + grace)}.")
    return 0


def add(args: argparse.Namespace) -> int:
    return _store_key(args, None)


def rotate(args: argparse.Namespace) -> int:
    return _store_key(args, parse_duration(args.grace, "--grace"))


def retire(args: argparse.Namespace) -> int:
    with local_store(args) as (_, any_store):
        store = sql(any_store)
        now = time.time()
        rows = store.list_upstream_keys(args.name)
        if args.key_id:
            targets = [r.id for r in rows if r.id == args.key_id and r.status != "retired"]
            if not targets:
                raise NotFound(f"no live key {args.key_id} on upstream {args.name}")
        else:
            targets = [r.id for r in rows if r.status == "retiring"]
        for key_id in targets:
            store.retire_upstream_keys(now, key_id=key_id, upstream=args.name)
            audit(store, "upstreams.retire", key_id, upstream=args.name)
    print(f"Retired {len(targets)} key(s) of {args.name}: " + (", ".join(targets) or "none"))
    return 0


def enable(args: argparse.Namespace) -> int:
    with local_store(args) as (settings, any_store):
        store = sql(any_store)
        configured = settings.upstreams.get(args.name)
        refs: tuple[str, ...] = ()
        if configured is not None:
            single = (configured.api_key_ref,) if configured.api_key is not None else ()
            refs = configured.api_key_refs or single
        config_ids = {f"{args.name}#{i}" for i in range(len(refs))}
        now = time.time()
        rows = store.list_upstream_keys(args.name)
        stored_ids = {r.id for r in rows if r.effective_status(now) != "retired"}
        if args.key_id not in config_ids | stored_ids:
            raise NotFound(f"no live key {args.key_id} on upstream {args.name}")
        store.enable_upstream_key(args.name, args.key_id, time.time())
        audit(store, "upstreams.enable", args.key_id, upstream=args.name)
    print(f"Key {args.key_id} of {args.name} goes back into rotation on running gateways.")
    return 0


def list_upstreams(args: argparse.Namespace) -> int:
    with local_store(args) as (settings, any_store):
        store = sql(any_store)
        now = time.time()
        store.retire_upstream_keys(now)  # sweep expired grace periods
        defs = {d.name: d for d in store.list_upstream_defs()}
        rows = store.list_upstream_keys()
    views: list[dict[str, Any]] = []
    for up in settings.upstreams.values():
        for i, ref in enumerate(up.api_key_refs):
            value = up.api_keys[i] if i < len(up.api_keys) else None
            views.append(
                {
                    "upstream": up.name,
                    "base_url": up.base_url,
                    "key_id": f"{up.name}#{i}",
                    "source": ref,
                    "last4": value.reveal()[-4:] if value else None,
                    "fingerprint": fingerprint(value.reveal()) if value else None,
                    "created_at": None,
                    "last_used_at": None,
                    "status": "active" if value else "missing" if not ref.startswith("file:") else "file",
                }
            )
    for r in rows:
        base = settings.upstreams[r.upstream].base_url if r.upstream in settings.upstreams else None
        d = defs.get(r.upstream)
        views.append(
            {
                "upstream": r.upstream,
                "base_url": base or (d.base_url if d else None),
                "key_id": r.id,
                "source": "store",
                "last4": r.last4,
                "fingerprint": r.fingerprint,
                "created_at": fmt_time(r.created_at),
                "last_used_at": fmt_time(r.last_used_at) if r.last_used_at else None,
                "status": r.effective_status(now),
                "retire_at": fmt_time(r.retire_at) if r.retire_at else None,
            }
        )
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
