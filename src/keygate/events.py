"""Security events of the data plane: each one an audit entry and an alert, off the request path.

The guards and the upstream pool call one method per event (:class:`SecurityEvents`); it builds
the audit record (action ``security.<kind>``, actor and origin, details redacted), adds it to a
write-behind buffer that a thread of its own writes to the store (so the chain is extended, and
the entry exported, never on the event loop), and hands the alert to the :class:`~keygate.alerts.
Alerter` (a queue per sink). A request pays for a list append and a queue put, and only when the
event happens.

Events: ``honeytoken_used``, ``lockout``, ``upstream_key_rejected``, ``budget_soft_threshold``,
``budget_exhausted`` (once per budget counter, i.e. per budget and period, and process),
``policy_denials`` (``audit.policy_denials`` refusals with 403 of one key within
``audit.policy_denials_window`` seconds: one entry per key and window; the refusals themselves
are in the usage log). :meth:`SecurityEvents.event` records any other kind (analytics).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import deque
from typing import Any, Final

from .alerts import Alerter
from .audit_config import AuditSettings
from .batching import ListWriteBehind
from .logs import redact
from .store import Store
from .types import AuditRecord

log = logging.getLogger("keygate.audit")
_MAX_PENDING: Final = 10_000  # entries buffered at most; beyond that they are counted and logged
_MAX_TRACKED: Final = 100_000  # keys whose recent denials are counted


class SecurityTrail(ListWriteBehind[AuditRecord]):
    """Security entries for the audit trail, written by a thread of their own."""

    failure_log = log
    failure_message = "security audit write failed; will retry"

    def __init__(self, store: Store, interval: float) -> None:
        super().__init__(interval, "keygate-security-audit")
        self._store = store
        self.dropped = 0

    def add(self, record: AuditRecord) -> None:
        if len(self._pending) >= _MAX_PENDING:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("security audit buffer full: entry dropped", extra={"dropped": self.dropped})
            return
        self._pending.append(record)

    def _write(self, batch: list[AuditRecord]) -> None:
        done = 0
        try:
            for record in batch:
                self._store.write_audit(record)
                done += 1
        finally:
            del batch[:done]  # (a retry writes only what is left)


class Burst:
    """``threshold`` hits of one name within ``window`` seconds: :meth:`hit` says True once, then
    not again for that name until a window has passed. Thread-safe; memory bounded."""

    def __init__(self, threshold: int, window: float) -> None:
        self.threshold, self.window = threshold, window
        self._hits: dict[str, deque[float]] = {}
        self._quiet_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def hit(self, name: str) -> bool:
        if self.threshold <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            if self._quiet_until.get(name, 0.0) > now:
                return False
            hits = self._hits.get(name)
            if hits is None:
                if len(self._hits) >= _MAX_TRACKED:
                    self._hits.clear()
                    self._quiet_until.clear()
                hits = self._hits[name] = deque()
            hits.append(now)
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) < self.threshold:
                return False
            del self._hits[name]
            self._quiet_until[name] = now + self.window
            return True


class SecurityEvents:
    def __init__(
        self,
        store: Store | None,
        alerter: Alerter,
        settings: AuditSettings,
        interval: float = 0.5,
    ) -> None:
        self.trail = SecurityTrail(store, interval) if store is not None else None
        self.alerter = alerter
        self._origin = f"gateway@{socket.gethostname()}"
        self._denials = Burst(settings.policy_denials, settings.policy_denials_window)
        self.admin_failures = Burst(settings.admin_auth_failures, settings.admin_auth_failures_window)
        self._exhausted: set[str] = set()

    async def start(self) -> None:
        if self.trail is not None:
            await self.trail.start()

    async def close(self) -> None:
        if self.trail is not None:
            await self.trail.close()
        await asyncio.to_thread(self.alerter.close)  # (up to 2 s for queued alerts, off the loop)

    def event(
        self,
        kind: str,
        target: str,
        /,
        *,
        actor: str = "gateway",
        origin: str | None = None,
        alert: dict[str, Any] | None = None,
        **details: Any,
    ) -> None:
        """Audit ``security.<kind>`` on ``target`` and alert ``kind`` (with ``alert`` as its
        fields, else the details). Never raises."""
        try:
            raw = json.dumps(details, default=str, ensure_ascii=False, separators=(",", ":"))
            record = AuditRecord(
                time.time(), actor, origin or self._origin, f"security.{kind}", target, redact(raw)
            )
            if self.trail is not None:
                self.trail.add(record)
            self.alerter.emit(kind, target=target, **(details if alert is None else alert))
        except Exception:
            log.exception("security event could not be recorded", extra={"event": kind})

    # -- keygate's own events ------------------------------------------------------------------

    def honeytoken_used(self, key_id: str, key_name: str, client_ip: str, **request: Any) -> None:
        fields = {"key_id": key_id, "key_name": key_name, "client_ip": client_ip}
        self.event(
            "honeytoken_used",
            key_id,
            actor=f"key:{key_id}",
            origin=client_ip,
            alert={**fields, "severity": "high", **{k: v for k, v in request.items() if k != "headers"}},
            **fields,
            **request,
        )

    def lockout(self, client_ip: str, failures: int, window: float, duration: float) -> None:
        self.event(
            "lockout",
            client_ip,
            actor="client",
            origin=client_ip,
            client_ip=client_ip,
            failures=failures,
            window_s=window,
            lockout_s=duration,
        )

    def upstream_key_rejected(self, upstream: str, key_id: str, status: int) -> None:
        self.event(
            "upstream_key_rejected",
            key_id,
            upstream=upstream,
            upstream_key=key_id,
            upstream_status=status,
            severity="high",
        )

    def budget_soft_threshold(self, notice: dict[str, Any]) -> None:
        self.event("budget_soft_threshold", str(notice.get("counter", "")), **notice)

    def budget_exhausted(self, counter: str, **budget: Any) -> None:
        """A request refused by a budget: told once per counter (budget and period)."""
        if counter in self._exhausted:
            return
        if len(self._exhausted) >= _MAX_TRACKED:
            self._exhausted.clear()
        self._exhausted.add(counter)
        self.event("budget_exhausted", counter, counter=counter, **budget)

    def policy_denied(self, key_id: str, key_name: str, code: str, client_ip: str) -> None:
        """Count one refusal (403) of ``key_id``; ``policy_denials`` of them within the window make
        one event (then none for that key until a window has passed)."""
        if not self._denials.hit(key_id):
            return
        self.event(
            "policy_denials",
            key_id,
            actor=f"key:{key_id}",
            origin=client_ip,
            key_id=key_id,
            key_name=key_name,
            denials=self._denials.threshold,
            window_s=self._denials.window,
            last_code=code,
        )
