"""Client-key rotation schedules: durations, and which keys are due for rotation or expiry.

A key's policy may carry ``rotate_every`` (seconds, set with ``--rotate-every 30d``) and
``rotated_at`` (set by ``keygate keys rotate``); the schedule counts from the last rotation, or
from creation. An ``expires_at`` (epoch seconds or ISO 8601), if another feature set one, counts
too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import InvalidRequest
from .types import KeyRecord

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, flag: str) -> float:
    """``90s``, ``15m``, ``24h``, ``30d``, ``2w`` (or plain seconds) as seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise InvalidRequest(f"{flag}: expected a duration such as 24h or 30d, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _epoch(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


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
        every = _epoch(r.policy.get("rotate_every"))
        if every:
            since = _epoch(r.policy.get("rotated_at")) or r.created_at
            if since + every <= now + window:
                out.append(Due(r, "rotation", since + every))
        expires = _epoch(r.policy.get("expires_at"))
        if expires is not None and expires <= now + window:
            out.append(Due(r, "expiry", expires))
    return sorted(out, key=lambda d: d.when)
