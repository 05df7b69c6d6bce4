"""Anomaly events, quarantined keys and learned baselines: the behavioural analytics' tables.

Mixed into :class:`~keygate.store.sqlite.SQLiteStore`. The SQL is the common subset of SQLite and
PostgreSQL (``?`` placeholders, ``ON CONFLICT ... DO``, no AUTOINCREMENT: event ids are random
text made by the analyser). A quarantine or a release bumps ``keys_rev`` in its own transaction,
so every process's key cache (``keys_changed``) sees it on its next request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..types import AuditRecord
from .sql import SqlConn, where

_DDL = """
CREATE TABLE IF NOT EXISTS anomalies (
    id TEXT PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    detector TEXT NOT NULL,
    key_id TEXT,
    team_id TEXT,
    subject TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    acted BIGINT NOT NULL,
    evidence TEXT NOT NULL,
    acked_at DOUBLE PRECISION,
    acked_by TEXT
);
CREATE INDEX IF NOT EXISTS anomalies_ts ON anomalies (ts);
CREATE INDEX IF NOT EXISTS anomalies_key_ts ON anomalies (key_id, ts);
CREATE TABLE IF NOT EXISTS key_quarantine (
    key_id TEXT PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    event_id TEXT NOT NULL,
    detector TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS anomaly_baselines (
    scope TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
"""
MIGRATION = ("0005_anomalies", _DDL)
PG_MIGRATION = ("0005_anomalies", _DDL)  # the same text: every type and statement is portable


@dataclass(frozen=True, slots=True)
class AnomalyRow:
    """One anomaly event as stored: never a secret (the evidence holds counts, networks, ids)."""

    id: str
    ts: float
    detector: str
    key_id: str | None
    team_id: str | None
    subject: str
    score: float
    action: str
    acted: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    acked_at: float | None = None
    acked_by: str | None = None


_COLUMNS = "id, ts, detector, key_id, team_id, subject, score, action, acted, evidence, acked_at, acked_by"


def _row(r: Sequence[Any]) -> AnomalyRow:
    return AnomalyRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), json.loads(r[9]), r[10], r[11]
    )


class AnalyticsMixin:
    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[SqlConn]: ...
        def _conn(self) -> SqlConn: ...
        def _insert_audit(self, conn: SqlConn, record: AuditRecord) -> object: ...
        @staticmethod
        def _bump_keys_rev(conn: SqlConn) -> None: ...

    def write_anomalies(self, rows: Sequence[AnomalyRow]) -> None:
        if not rows:
            return
        with self._tx() as conn:
            conn.executemany(
                f"INSERT INTO anomalies ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
                " ON CONFLICT (id) DO NOTHING",
                [
                    (
                        r.id,
                        r.ts,
                        r.detector,
                        r.key_id,
                        r.team_id,
                        r.subject,
                        r.score,
                        r.action,
                        int(r.acted),
                        json.dumps(r.evidence, default=str),
                        r.acked_at,
                        r.acked_by,
                    )
                    for r in rows
                ],
            )

    def list_anomalies(
        self, key_id: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AnomalyRow]:
        clause, args = where(("key_id = ?", key_id), ("ts >= ?", since))
        sql = f"SELECT {_COLUMNS} FROM anomalies WHERE {clause} ORDER BY ts DESC, id LIMIT ?"  # noqa: S608
        return [_row(r) for r in self._conn().execute(sql, [*args, limit]).fetchall()]

    def get_anomaly(self, event_id: str) -> AnomalyRow | None:
        sql = f"SELECT {_COLUMNS} FROM anomalies WHERE id = ?"  # noqa: S608 (constant columns)
        r = self._conn().execute(sql, (event_id,)).fetchone()
        return _row(r) if r else None

    def ack_anomaly(self, event_id: str, by: str, when: float, audit: AuditRecord) -> bool:
        """Mark an event acknowledged; False if there is no such event or it was acknowledged."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE anomalies SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL",
                (when, by, event_id),
            )
            if cur.rowcount:
                self._insert_audit(conn, audit)
            return cur.rowcount > 0

    # -- quarantine (a change counts for keys_changed) ---------------------------------------------

    def quarantine_key(
        self, key_id: str, ts: float, event_id: str, detector: str, audit: AuditRecord
    ) -> bool:
        """Quarantine a key; False if it already was (then nothing is written)."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO key_quarantine (key_id, ts, event_id, detector) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key_id) DO NOTHING",
                (key_id, ts, event_id, detector),
            )
            if cur.rowcount:
                self._insert_audit(conn, audit)
                self._bump_keys_rev(conn)
            return cur.rowcount > 0

    def release_key(self, key_id: str, audit: AuditRecord) -> bool:
        """End a key's quarantine; False if it was not quarantined."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM key_quarantine WHERE key_id = ?", (key_id,))
            if cur.rowcount:
                self._insert_audit(conn, audit)
                self._bump_keys_rev(conn)
            return cur.rowcount > 0

    def list_quarantines(self) -> dict[str, tuple[float, str, str]]:
        """Every quarantined key: id -> (since, event id, detector)."""
        rows = self._conn().execute("SELECT key_id, ts, event_id, detector FROM key_quarantine").fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    # -- baselines ---------------------------------------------------------------------------------

    def save_baselines(self, rows: Sequence[tuple[str, str]], ts: float) -> None:
        """``(scope, JSON)`` of the baselines that changed (``key:ID``, ``team:ID``)."""
        if not rows:
            return
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO anomaly_baselines (scope, data, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                [(scope, data, ts) for scope, data in rows],
            )

    def load_baselines(self) -> dict[str, str]:
        return dict(self._conn().execute("SELECT scope, data FROM anomaly_baselines").fetchall())
