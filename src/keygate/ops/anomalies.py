"""Anomaly events and quarantined keys: list, acknowledge, release (CLI and admin API alike).

Events are what the analyser stored (``keygate.analytics``): the key, the detector, the evidence
(counts, networks, baseline against observed), never a secret. Acknowledging one records who
looked at it; releasing a quarantined key lets it in again on its next request, in every
process (the release bumps the key records' revision). Both are audited.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import InvalidRequest, NotFound
from ..store import AnomalyRow, Store
from ..times import fmt_time, parse_duration, parse_instant
from .audit import Actor

MAX_LIMIT = 1000


def since_of(value: str | None, now: float | None = None) -> float | None:
    """``--since``: a duration back from now (``1h``, ``7d``) or an instant (ISO 8601, epoch)."""
    if value is None or value == "":
        return None
    now = time.time() if now is None else now
    try:
        return now - parse_duration(value, "since")
    except InvalidRequest:
        return parse_instant(value, "since")


def view(row: AnomalyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "time": fmt_time(row.ts),
        "ts": row.ts,
        "detector": row.detector,
        "key_id": row.key_id,
        "team_id": row.team_id,
        "subject": row.subject,
        "score": round(row.score, 2),
        "action": row.action,
        "acted": row.acted,
        "evidence": row.evidence,
        "acked_at": fmt_time(row.acked_at) if row.acked_at is not None else None,
        "acked_by": row.acked_by,
    }


def list_events(
    store: Store, key_id: str | None = None, since: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be from 1 to {MAX_LIMIT}", param="limit")
    return [view(r) for r in store.list_anomalies(key_id, since_of(since), limit)]


def ack(store: Store, actor: Actor, event_id: str) -> dict[str, Any]:
    row = store.get_anomaly(event_id)
    if row is None:
        raise NotFound(f"no anomaly event with id {event_id[:80]!r}")
    if row.acked_at is None:
        store.ack_anomaly(event_id, actor.id, time.time(), actor.record("anomalies.ack", event_id))
        row = store.get_anomaly(event_id) or row
    return view(row)


def quarantined(store: Store) -> list[dict[str, Any]]:
    return [
        {"key_id": key_id, "since": fmt_time(ts), "event_id": event_id, "detector": detector}
        for key_id, (ts, event_id, detector) in sorted(store.list_quarantines().items())
    ]


def release(store: Store, actor: Actor, key_id: str) -> dict[str, Any]:
    """End a key's quarantine (effective on its next request); audited as ``keys.release``."""
    if store.get_key(key_id) is None and key_id not in store.list_quarantines():
        raise NotFound(f"no key with id {key_id[:80]!r}")
    was = store.list_quarantines().get(key_id)
    released = False
    if was is not None:
        audit = actor.record("keys.release", key_id, event=was[1], detector=was[2])
        released = store.release_key(key_id, audit)
    return {"key_id": key_id, "released": released, "was_quarantined": was is not None}
