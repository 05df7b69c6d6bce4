"""The one reading of times and durations, for CLI flags, admin JSON and stored records alike.

Durations (``--expires-in``, ``--rotate-every``, ``--grace``, ``--within``, and config values that
take one): a non-negative number with an optional unit, ``s`` (the default), ``m``, ``h``, ``d``
or ``w``; decimals are allowed, blanks around the parts are not significant::

    90  90s  15m  1.5h  30d  2w  0

Instants (``--expires-at``, ``expires_at`` and ``rotated_at`` in policy JSON): an ISO 8601 time
(``2027-01-31T00:00:00Z``; a time without an offset is UTC), or seconds since the epoch as a
number. Stored policies keep them in one canonical form, ISO 8601 UTC to the second
(:func:`iso`), whichever form they arrived in; records written before that still read correctly.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from .errors import InvalidRequest

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# The latest instant accepted: year 9999, so every accepted instant has an ISO 8601 form.
_LATEST: Final = 253402300799.0


def parse_duration(text: str, what: str) -> float:
    """Seconds in ``text`` (``90s``, ``15m``, ``1.5d``, ``2w``, plain seconds); ``what`` names the
    flag or field in the error."""
    m = _DURATION.match(text)
    if m is None:
        raise InvalidRequest(
            f"{what}: expected a duration such as 90s, 15m, 24h, 1.5d or 2w, got {text[:40]!r}"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds > _LATEST:
        raise InvalidRequest(f"{what}: {text[:40]!r} is too long")
    return seconds


def parse_instant(value: object, what: str) -> float:
    """Seconds since the epoch of an ISO 8601 time or an epoch number; ``InvalidRequest`` naming
    ``what`` for anything else (booleans, NaN, negative or out-of-range numbers, other text)."""
    found = instant(value)
    if found is None:
        raise InvalidRequest(
            f"{what}: expected an ISO 8601 time such as 2027-01-31T00:00:00Z or seconds since the epoch"
        )
    return found


def instant(value: object) -> float | None:
    """:func:`parse_instant` without the error: None when ``value`` is not a time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and 0 <= seconds <= _LATEST else None
    if isinstance(value, str) and len(value) <= 64:
        return _iso_seconds(value.strip())
    return None


@lru_cache(maxsize=4096)
def _iso_seconds(text: str) -> float | None:
    # Cached: the same few expiry strings of the key records are read on every request.
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    seconds = dt.timestamp()
    return seconds if 0 <= seconds <= _LATEST else None


def expired(value: object, now: float) -> bool:
    """Whether an expiry read from a stored record has passed. A value that is not a time counts as
    passed: a record keygate cannot read is refused, never let through."""
    when = instant(value)
    return when is None or now >= when


def iso(ts: float) -> str:
    """``ts`` as ISO 8601 UTC to the second: ``2027-01-31T00:00:00Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_time(ts: float | None) -> str:
    """:func:`iso`, or ``-`` for no time (tables and views)."""
    return "-" if ts is None else iso(ts)
