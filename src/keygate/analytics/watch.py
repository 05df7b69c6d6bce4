"""The analyser in a running gateway: fed by the request path, run off it, acting on its events.

:class:`AnomalyWatch` is a write-behind buffer (:mod:`keygate.batching`): the request path only
appends a feature tuple; every ``anomalies.interval`` seconds a pass hands the batch to the
writer thread, which runs the analyser with the wall clock, stores the events and carries out
their actions. An action takes effect on the key's next request: the board's tables and the key
cache's quarantine set are what the anomaly guards read.

Baselines are loaded when the gateway starts and written every ``snapshot_interval`` and at
shutdown (only the ones that changed). A failed pass is logged and its batch dropped: analysis
is best effort, the request path never waits for it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..anomalyconf import ACTIONS, AnomalySettings
from ..batching import ListWriteBehind
from ..logs import redact
from ..store import AnomalyRow, Store
from ..types import AuditRecord
from .actions import ACTOR, AlertSink, Board, LogAuditSink
from .detectors import Event
from .engine import Analyser
from .features import Feature

log = logging.getLogger("keygate.anomaly")
_ALERT, _THROTTLE, _BLOCK, _QUARANTINE = (
    ACTIONS.index(a) for a in ("alert", "throttle", "block_network", "quarantine")
)


def event_row(e: Event) -> AnomalyRow:
    return AnomalyRow(
        e.id, e.ts, e.detector, e.key_id, e.team_id, e.subject, e.score, e.action, e.acted, e.evidence
    )


class AnomalyWatch(ListWriteBehind[Feature]):
    failure_log = log
    failure_message = "anomaly analysis failed; this batch is not analysed"

    def __init__(self, settings: AnomalySettings, store: Store, sink: AlertSink | None = None) -> None:
        super().__init__(settings.interval, "keygate-anomalies")
        self.settings = settings
        self.store = store
        self.sink: AlertSink = sink if sink is not None else LogAuditSink(store)
        self.analyser = Analyser(settings)
        self.board = Board(settings.throttle_rpm)
        self._snapshot_at = 0.0

    def record(self, feature: Feature) -> None:
        """The request path's one call: append a feature (the next pass reads it)."""
        self._pending.append(feature)

    # -- lifecycle ---------------------------------------------------------------------------------

    def load(self) -> int:
        """Read the stored baselines (at start)."""
        rows: dict[str, dict[str, Any]] = {}
        for scope, data in self.store.load_baselines().items():
            try:
                rows[scope] = json.loads(data)
            except ValueError:
                log.warning("stored baseline is not JSON; it is learned again", extra={"scope": scope})
        loaded = self.analyser.restore(rows)
        for key_id in self.store.list_quarantines():
            state = self.analyser.keys.get(key_id)
            if state is not None:
                state.quarantined = True
        self._snapshot_at = time.time()
        return loaded

    async def start(self) -> None:
        await self._in_writer(self.load)
        await super().start()

    @property
    def pending(self) -> bool:
        return bool(self._pending) or bool(self.analyser.dirty)

    async def flush(self) -> None:
        # Every interval, with or without new features: windows close, blocks expire.
        batch, self._pending = self._pending, []
        try:
            await self._in_writer(self.run_pass, batch, time.time())
        except Exception:
            self.failure_log.exception(self.failure_message, extra={"rows": len(batch)})

    async def close(self) -> None:
        await super().close()  # the last pass, then the writer thread ends

    # -- one pass (writer thread) ------------------------------------------------------------------

    def run_pass(self, batch: list[Feature], now: float) -> list[Event]:
        quarantined = self.store.list_quarantines()
        for key_id, state in self.analyser.keys.items():
            if state.quarantined and key_id not in quarantined and self.settings.mode == "act":
                self.analyser.release(key_id)  # an operator released it
        events = self.analyser.process(batch, now)
        if events:
            self.store.write_anomalies([event_row(e) for e in events])
            for event in events:
                self.act(event)
        self.board.expire(now)
        if now - self._snapshot_at >= self.settings.snapshot_interval or not self._task_running():
            self.save(now)
        return events

    def _task_running(self) -> bool:
        return self._task is not None and not self._task.cancelled() and not self._task.done()

    def save(self, now: float) -> None:
        rows = self.analyser.snapshot()
        if rows:
            self.store.save_baselines([(scope, json.dumps(data)) for scope, data in rows], now)
        self.analyser.prune(now)
        self._snapshot_at = now

    def act(self, event: Event) -> None:
        fields = event.view()
        level = ACTIONS.index(event.action)
        log.log(
            logging.WARNING if level >= _ALERT else logging.INFO,
            "anomaly detected" if event.acted else "anomaly detected (observe mode: no action)",
            extra={"anomaly": fields},
        )
        if not event.acted:
            return
        s = self.settings
        if level >= _ALERT:
            self.sink.emit("anomaly", **fields)
        if event.action == "throttle" and event.key_id is not None:
            self.board.throttle(event.key_id, event.ts + s.throttle_duration)
        elif event.action == "block_network":
            if "/" in event.subject:  # an event about a whole network (stuffing from many addresses)
                ip, _, bits = event.subject.partition("/")
                self.board.block(ip, int(bits), int(bits), event.ts + s.block_duration)
            else:
                for ip in _addresses(event):
                    self.board.block(ip, s.block_prefix_v4, s.block_prefix_v6, event.ts + s.block_duration)
        elif event.action == "quarantine" and event.key_id is not None:
            details = redact(
                json.dumps(
                    {"event": event.id, "detector": event.detector, "evidence": event.evidence}, default=str
                )
            )
            audit = AuditRecord(event.ts, ACTOR, "local", "keys.quarantine", event.key_id, details)
            self.store.quarantine_key(event.key_id, event.ts, event.id, event.detector, audit)


def _addresses(event: Event) -> list[str]:
    """What a block_network action blocks: the event's client address, else its new networks."""
    ip = event.evidence.get("client_ip")
    if isinstance(ip, str):
        return [ip]
    nets = event.evidence.get("new_networks")
    if isinstance(nets, list):
        return [str(n).split("/")[0] for n in nets]
    return []
