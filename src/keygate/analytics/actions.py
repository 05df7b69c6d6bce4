"""What an anomaly event does: the alert sink, and the board of temporary actions guards read.

**Alert sink.** :class:`AlertSink` is one method, ``emit(kind, **fields)``, the shape of
:meth:`keygate.alerts.Alerter.emit`. :class:`LogAuditSink` sends each alert to the operator log
(``keygate.alert``), the audit trail (``alert.<kind>`` entries) and the gateway's alert sinks
(``alerts:``).

**Board.** Throttles and network blocks are temporary and per process: the analyser's thread
writes them, the request path reads them. Each table is replaced whole on change, never mutated,
so the request path reads a consistent dict without a lock, and an empty table costs one truth
test. Quarantine is not here: it is stored (``Store.quarantine_key``) so every process and
instance refuses the key, and reaches the request path through the key cache.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from typing import Any, Protocol

from ..counters import Rate
from ..logs import redact
from ..store import Store
from ..types import AuditRecord, IPAddress

log = logging.getLogger("keygate.alert")

ACTOR = "analytics"  # the audit actor of what the analyser does by itself


class AlertSink(Protocol):
    def emit(self, kind: str, /, **fields: Any) -> None: ...


class LogAuditSink:
    """The operator log and an audit entry per alert, and the alert sinks of ``alerts:`` (``also``,
    the gateway's :class:`~keygate.alerts.Alerter`)."""

    def __init__(self, store: Store | None, also: AlertSink | None = None) -> None:
        self._store = store
        self._also = also

    def emit(self, kind: str, /, **fields: Any) -> None:
        log.warning("anomaly alert", extra={"alert": kind, **fields})
        if self._also is not None:
            self._also.emit(kind, **fields)
        if self._store is None:
            return
        raw = redact(json.dumps(fields, default=str, separators=(",", ":")))
        target = str(fields.get("key_id") or fields.get("subject") or "-")
        try:
            self._store.write_audit(AuditRecord(time.time(), ACTOR, "local", f"alert.{kind}", target, raw))
        except Exception:
            log.exception("alert could not be written to the audit trail", extra={"alert": kind})


def _network_key(addr: IPAddress, prefix: int) -> tuple[int, int, int]:
    bits = 32 if addr.version == 4 else 128
    return (addr.version, prefix, int(addr) >> (bits - prefix))


class Board:
    """Temporary actions in force in this process (throttled keys, blocked networks)."""

    def __init__(self, throttle_rpm: int) -> None:
        self.throttle_rpm = throttle_rpm
        self.throttled: dict[str, tuple[float, Rate]] = {}  # key id -> (until, its lower rate)
        self.blocked: dict[tuple[int, int, int], tuple[float, str]] = {}  # network -> (until, text)
        self.prefixes: tuple[tuple[int, int], ...] = ()  # (version, prefix) of the blocked networks

    def throttle(self, key_id: str, until: float) -> None:
        rate = Rate(f"anomaly_throttle:{key_id}", self.throttle_rpm, 60.0)
        self.throttled = {**self.throttled, key_id: (until, rate)}

    def block(self, ip: str, v4: int, v6: int, until: float) -> str | None:
        """Block the network of ``ip`` (/v4 or /v6) until ``until``; its text, None if unparsable."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        prefix = v4 if addr.version == 4 else v6
        text = str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
        self.blocked = {**self.blocked, _network_key(addr, prefix): (until, text)}
        self.prefixes = tuple(sorted({(v, p) for v, p, _ in self.blocked}))
        return text

    def blocked_until(self, addr: IPAddress, now: float) -> float | None:
        """When the block on ``addr``'s network ends, or None (the request path: cheap when empty)."""
        blocked = self.blocked
        for version, prefix in self.prefixes:
            if version == addr.version:
                found = blocked.get(_network_key(addr, prefix))
                if found is not None and found[0] > now:
                    return found[0]
        return None

    def expire(self, now: float) -> None:
        if any(until <= now for until, _ in self.throttled.values()):
            self.throttled = {k: v for k, v in self.throttled.items() if v[0] > now}
        if any(until <= now for until, _ in self.blocked.values()):
            self.blocked = {k: v for k, v in self.blocked.items() if v[0] > now}
            self.prefixes = tuple(sorted({(v, p) for v, p, _ in self.blocked}))

    def view(self, now: float) -> dict[str, Any]:
        return {
            "throttled": {k: round(until - now) for k, (until, _) in self.throttled.items() if until > now},
            "blocked": {text: round(until - now) for until, text in self.blocked.values() if until > now},
        }
