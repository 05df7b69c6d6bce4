"""Upstreams and their keys: store them (sealed), rotate, retire and re-enable them.

Secrets are write-only: a caller hands one in (the CLI reads it from stdin or a no-echo prompt),
it is sealed with the master key (:mod:`keygate.vault`) and never shown again; views carry the
last 4 characters and a fingerprint.

An upstream can be defined in the config file or in the store (``keygate upstreams add NAME
--base-url URL``). A config file without ``upstreams`` has the built-in ``openai`` upstream; a
stored definition of that name replaces it (the built-in default's ``${OPENAI_API_KEY}`` is then
not used for it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import keys as keyfmt
from .. import schema
from ..config import Settings
from ..errors import ConfigError, InvalidRequest, NotFound
from ..store import Store, UpstreamDef, UpstreamKeyRow
from ..times import fmt_time
from ..types import Secret
from ..vault import Keyring, fingerprint
from .audit import Actor
from .validate import check_name, check_ref


def known_upstreams(settings: Settings, store: Store) -> set[str]:
    return set(settings.upstreams) | {d.name for d in store.list_upstream_defs()}


def resolve_upstream(settings: Settings, store: Store, name: Any) -> str | None:
    """A client key's pinned upstream: one of the config file or the store; ''/None means none."""
    ref = check_ref(name, "upstream")
    if ref is None:
        return None
    known = known_upstreams(settings, store)
    if ref not in known:
        raise InvalidRequest(
            f"upstream: no upstream named {ref!r} (known: {', '.join(sorted(known))})", param="upstream"
        )
    return ref


def keyring_for(settings: Settings) -> Keyring:
    ring = Keyring.from_secrets(settings.master_key, settings.previous_master_key)
    if ring is None:
        raise ConfigError(
            "master key: storing upstream keys needs a master key "
            "(set KEYGATE_MASTER_KEY or master_key_file; see keygate master-key generate)"
        )
    return ring


def define(
    settings: Settings,
    store: Store,
    actor: Actor,
    name: str,
    *,
    base_url: str | None = None,
    allow_insecure: bool = False,
    fallback: str | None = None,
    ca_bundle: str | None = None,
) -> None:
    """Make sure upstream ``name`` exists: a config upstream as it is, else a stored definition,
    created or changed by the options given."""
    configured = settings.upstreams.get(name)
    if configured is not None and configured.source == "config":
        if base_url and base_url.rstrip("/") != configured.base_url:
            raise InvalidRequest(f"upstream {name} is defined in the config file with another base URL")
        if fallback or ca_bundle or allow_insecure:
            raise InvalidRequest(f"upstream {name} is defined in the config file: change it there")
        return
    current = {d.name: d for d in store.list_upstream_defs()}.get(name)
    if current is None and not base_url:
        if configured is not None:  # the built-in default, as it is
            return
        raise InvalidRequest(f"upstream {name} is new: give its --base-url", param="base_url")
    if current is None:
        check_name(name, "upstream")  # a new name: shown in lists, so no control characters
    known = known_upstreams(settings, store)
    if fallback and (fallback not in known or fallback == name):
        raise InvalidRequest(f"--fallback: {fallback} is not another upstream", param="fallback")
    if ca_bundle:
        schema.pem_bundle(Path(ca_bundle), "--ca-bundle")
    insecure = allow_insecure or (current.allow_insecure if current else False)
    # A config-grade check (exit 2 from the CLI), like the same setting in the config file.
    url = schema.url(base_url or (current.base_url if current else ""), "--base-url", insecure_ok=insecure)
    definition = UpstreamDef(
        name,
        url,
        insecure,
        fallback or (current.fallback if current else None),
        str(Path(ca_bundle).resolve()) if ca_bundle else (current.ca_bundle if current else None),
        current.created_at if current else time.time(),
    )
    if definition != current:
        store.put_upstream_def(
            definition, actor.record("upstreams.define", name, base_url=url, fallback=definition.fallback)
        )


def store_key(
    settings: Settings, store: Store, actor: Actor, name: str, secret: Secret, grace: float | None = None
) -> dict[str, Any]:
    """Seal and store a key for upstream ``name`` (which must exist, see :func:`define`); with
    ``grace``, the upstream's other keys retire that many seconds from now (a rotation)."""
    if name not in known_upstreams(settings, store):
        raise NotFound(f"no upstream named {name!r}")
    ring = keyring_for(settings)
    key_id = keyfmt.new_id("uk")
    now = time.time()
    value = secret.reveal()
    row = UpstreamKeyRow(
        key_id,
        name,
        value[-4:],
        fingerprint(value),
        now,
        None,
        "active",
        None,
        ring.seal(name, key_id, value),
    )
    action = "upstreams.add" if grace is None else "upstreams.rotate"
    audit = actor.record(action, key_id, upstream=name, fingerprint=row.fingerprint)
    store.insert_upstream_key(row, audit, retire_others_at=None if grace is None else now + grace)
    return {
        "key_id": key_id,
        "upstream": name,
        "last4": row.last4,
        "fingerprint": row.fingerprint,
        "others_retire_at": fmt_time(now + grace) if grace is not None else None,
    }


def retire(store: Store, actor: Actor, name: str, key_id: str | None) -> list[str]:
    """Retire (and wipe) one live key now, or every key of ``name`` still in its grace period."""
    now = time.time()
    rows = store.list_upstream_keys(name)
    if key_id:
        targets = [r.id for r in rows if r.id == key_id and r.status != "retired"]
        if not targets:
            raise NotFound(f"no live key {key_id} on upstream {name}")
    else:
        targets = [r.id for r in rows if r.status == "retiring"]
    return [
        t
        for t in targets
        if store.retire_upstream_key(name, t, now, actor.record("upstreams.retire", t, upstream=name))
    ]


def enable(settings: Settings, store: Store, actor: Actor, name: str, key_id: str) -> None:
    """Put a key rejected by the upstream (401/403) back into rotation on running gateways."""
    configured = settings.upstreams.get(name)
    refs = configured.api_key_refs if configured is not None else ()
    config_ids = {f"{name}#{i}" for i in range(len(refs))}
    now = time.time()
    stored_ids = {r.id for r in store.list_upstream_keys(name) if r.effective_status(now) != "retired"}
    if key_id not in config_ids | stored_ids:
        raise NotFound(f"no live key {key_id} on upstream {name}")
    store.enable_upstream_key(name, key_id, now, actor.record("upstreams.enable", key_id, upstream=name))


def views(settings: Settings, store: Store) -> list[dict[str, Any]]:
    """Every upstream key, from the config file and the store (never a secret)."""
    now = time.time()
    store.sweep_retired_keys(now)
    defs = {d.name: d for d in store.list_upstream_defs()}
    out: list[dict[str, Any]] = []
    for up in settings.upstreams.values():
        if up.source == "builtin" and up.name in defs:
            continue  # replaced by its stored definition
        for i, ref in enumerate(up.api_key_refs):
            value = up.api_keys[i] if i < len(up.api_keys) else None
            out.append(
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
    for r in store.list_upstream_keys():
        configured = settings.upstreams.get(r.upstream)
        d = defs.get(r.upstream)
        base = d.base_url if d is not None else (configured.base_url if configured is not None else None)
        out.append(
            {
                "upstream": r.upstream,
                "base_url": base,
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
    return out
