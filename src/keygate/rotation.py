"""Client-key rotation schedules: which keys are due for rotation or expiry.

A key's policy may carry ``rotate_every`` (seconds, set with ``--rotate-every 30d``) and
``rotated_at`` (set by ``keygate keys rotate``); the schedule counts from the last rotation, or
from creation. An ``expires_at`` counts too. Times are read with :func:`keygate.times.instant`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .times import instant
from .types import KeyRecord


@dataclass(frozen=True, slots=True)
class Due:
    key: KeyRecord
    reason: str  # rotation | expiry
    when: float


def due_keys(records: list[KeyRecord], now: float, window: float) -> list[Due]:
    """Active keys whose rotation or expiry falls before ``now + window`` (overdue ones too)."""
    out: list[Due] = []
    for r in records:
        if not r.active or r.policy.get("honeytoken") is True:
            continue
        every = r.policy.get("rotate_every")
        if isinstance(every, int | float) and not isinstance(every, bool) and every > 0:
            since = instant(r.policy.get("rotated_at")) or r.created_at
            if since + every <= now + window:
                out.append(Due(r, "rotation", since + every))
        if "expires_at" in r.policy:
            expires = instant(r.policy["expires_at"])
            when = expires if expires is not None else now  # unreadable: refused, so due now
            if when <= now + window:
                out.append(Due(r, "expiry", when))
    return sorted(out, key=lambda d: d.when)
