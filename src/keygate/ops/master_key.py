"""The master key that wraps stored upstream secrets: re-wrap them under a new one, and status.

Rotation re-wraps row by row, each in its own transaction, and only rows still wrapped by another
master key; so an interrupted rotation (crash, kill, power loss) is resumed by running it again.
The ciphertexts themselves never change, so running gateways, which keep their decrypted keys in
memory, are unaffected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..store import Store
from ..types import Secret
from ..vault import Keyring, parse_master_key
from .audit import Actor


def rotate(
    settings: Settings,
    store: Store,
    actor: Actor,
    new_key: Secret,
    progress: Callable[[str, int, int], None] = lambda key_id, done, todo: None,
) -> dict[str, Any]:
    """Re-wrap every stored data key under ``new_key``; ``progress`` hears of each row done."""
    new = parse_master_key(new_key, "--new-key-file")
    previous = parse_master_key(settings.previous_master_key) if settings.previous_master_key else None
    current = parse_master_key(settings.master_key) if settings.master_key else None
    ring = Keyring(new, current, previous)
    rows = [r for r in store.list_upstream_keys() if r.sealed is not None]
    todo = [r for r in rows if r.sealed is not None and r.sealed.kek_id != ring.current_id]
    done = 0
    for r in todo:
        assert r.sealed is not None
        if store.rewrap_upstream_key(r.id, r.sealed.kek_id, ring.rewrap(r.upstream, r.id, r.sealed)):
            done += 1
            progress(r.id, done, len(todo))
    store.write_audit(actor.record("master_key.rotate", ring.current_id, rewrapped=done, total=len(rows)))
    return {"current": ring.current_id, "rewrapped": done, "total": len(rows)}


def status(settings: Settings, store: Store) -> dict[str, Any]:
    """Which master key is configured, and how many stored keys each master key wraps."""
    counts = Counter(r.sealed.kek_id for r in store.list_upstream_keys() if r.sealed is not None)
    ring = Keyring.from_secrets(settings.master_key, settings.previous_master_key)
    return {"current": ring.current_id if ring else None, "wrapped_by": dict(counts)}
