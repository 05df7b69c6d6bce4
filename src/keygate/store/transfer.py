"""Copy a SQLite store into a PostgreSQL store, table by table, row for row (``keygate migrate``).

Rows are copied as stored: hashes stay hashes and sealed upstream keys stay sealed (the copy
never needs the pepper or the master key to read them, and never opens one). Everything goes in
one transaction on the target, so a failed copy leaves it as it was.

Run twice, it copies nothing twice. Tables keyed by a name (keys, teams, tokens, upstreams, spend,
grace secrets, enables) are inserted with ``ON CONFLICT DO NOTHING``; usage and audit rows, which
have only a sequence number, are copied past the last source row a previous copy recorded in the
target's ``meta`` (``copied_from:<source>``), and numbered by the target (so they cannot collide
with rows the target had). Audit entries are written through the target's own hash chain
(:mod:`keygate.store.audit_sql`), in their original order with their original times, actors and
details: the target's chain verifies from its first entry, and anchors taken of the SQLite chain
do not carry over (their sequence numbers and hashes are the target's). The revisions in
``meta`` move past both stores' so that running gateways reload.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from ..types import AuditRecord
from .pg_schema import TABLES
from .postgres import PostgresStore
from .sql import SqlConn
from .sqlite import SQLiteStore

# Tables whose rows have a name of their own, and that name's column.
KEYED: dict[str, str] = {
    "teams": "id",
    "keys": "id",
    "key_grace_secrets": "key_hash",
    "admin_tokens": "id",
    "upstream_defs": "name",
    "upstream_keys": "id",
    "upstream_key_enables": "key_id",
    "spend": "name",
    "anomalies": "id",
    "key_quarantine": "key_id",
    "anomaly_baselines": "scope",
    "objects": "id",
}
SEQUENCED = ("usage", "audit")  # copied past the last id a previous copy recorded
REVISIONS = ("keys_rev", "upstreams_rev", "objects_rev")
BATCH = 2000


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")]


def _target_columns(conn: SqlConn, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ?",
        (table,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def _batches(cur: sqlite3.Cursor) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cur.fetchmany(BATCH):
        yield rows


def marker_name(source_label: str) -> str:
    return f"copied_from:{source_label}"


def occupied(target: PostgresStore) -> list[str]:
    """The target's tables that hold rows (the revisions in ``meta`` do not count)."""
    conn = target._conn()
    return [t for t in TABLES if t != "meta" and conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]  # noqa: S608


def previous_copy(target: PostgresStore, source_label: str) -> dict[str, int] | None:
    row = target._conn().execute("SELECT v FROM meta WHERE k = ?", (marker_name(source_label),)).fetchone()
    return {k: int(v) for k, v in json.loads(row[0]).items()} if row else None


def copy(
    source: SQLiteStore, target: PostgresStore, source_label: str, audit: AuditRecord | None
) -> dict[str, int]:
    """Copy what the target does not have yet; rows copied per table. ``audit`` (when anything is
    copied) is written with the copy, in its transaction, with the counts in its details."""
    src = source._conn()
    counts: dict[str, int] = {}
    with target._tx() as conn:
        done = {}
        row = conn.execute("SELECT v FROM meta WHERE k = ?", (marker_name(source_label),)).fetchone()
        if row is not None:
            done = {k: int(v) for k, v in json.loads(row[0]).items()}
        last: dict[str, int] = dict(done)
        for table in TABLES:
            cols = [c for c in _columns(src, table) if c in _target_columns(conn, table)]
            if not cols:
                continue
            if table == "meta":
                counts[table] = _copy_meta(src, conn)
                continue
            names = ", ".join(cols)
            if table in SEQUENCED:
                after = done.get(table, 0)
                body = [c for c in cols if c != "id"]
                cur = src.execute(
                    f"SELECT id, {', '.join(body)} FROM {table} WHERE id > ? ORDER BY id",  # noqa: S608
                    (after,),
                )
                sql = f"INSERT INTO {table} ({', '.join(body)}) VALUES ({', '.join('?' for _ in body)})"  # noqa: S608
                n = 0
                for rows in _batches(cur):
                    if table == "audit":
                        for r in rows:
                            fields = dict(zip(body, r[1:], strict=True))
                            target._insert_audit(conn, _audit_record(fields))
                    else:
                        conn.executemany(sql, [r[1:] for r in rows])
                    n += len(rows)
                    last[table] = int(rows[-1][0])
                counts[table] = n
                continue
            key = KEYED[table]
            have = {str(r[0]) for r in conn.execute(f"SELECT {key} FROM {table}")}  # noqa: S608
            cur = src.execute(f"SELECT {names} FROM {table}")  # noqa: S608
            index = cols.index(key)
            sql = (
                f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' for _ in cols)})"  # noqa: S608
                f" ON CONFLICT ({key}) DO NOTHING"
            )
            n = 0
            for rows in _batches(cur):
                fresh = [r for r in rows if str(r[index]) not in have]
                conn.executemany(sql, fresh)
                n += len(fresh)
            counts[table] = n
        copied = sum(v for k, v in counts.items() if k != "meta")
        if copied:
            conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                (marker_name(source_label), json.dumps({t: last.get(t, 0) for t in SEQUENCED})),
            )
            _advance_revisions(src, conn)
            if audit is not None:
                target._insert_audit(conn, _with_counts(audit, counts))
    return counts


def _copy_meta(src: sqlite3.Connection, conn: SqlConn) -> int:
    """Rows of ``meta`` other than the revisions (which :func:`_advance_revisions` moves)."""
    rows = [
        (str(k), str(v))
        for k, v in src.execute("SELECT k, v FROM meta")
        if k not in REVISIONS and not str(k).startswith("copied_from:")
    ]
    conn.executemany("INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING", rows)
    return len(rows)


def _advance_revisions(src: sqlite3.Connection, conn: SqlConn) -> None:
    """Each revision past both stores' values, with the notification running gateways wait for."""
    theirs = {str(k): str(v) for k, v in src.execute("SELECT k, v FROM meta")}
    for name in REVISIONS:
        row = conn.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
        mine = int(row[0]) if row else 0
        value = str(max(mine, int(theirs.get(name, "0") or 0)) + 1)
        conn.execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (name, value),
        )
        conn.execute("SELECT pg_notify(?, ?)", ("keygate_changes", f"{name[:-4]}:{value}"))


def _audit_record(fields: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        ts=float(fields["ts"]),
        actor=str(fields["actor"]),
        origin=str(fields["origin"]),
        action=str(fields["action"]),
        target=str(fields["target"]),
        details=str(fields["details"]),
    )


def _with_counts(audit: AuditRecord, counts: dict[str, int]) -> AuditRecord:
    details = json.loads(audit.details) if audit.details else {}
    details["copied"] = {k: v for k, v in counts.items() if v}
    return dataclasses.replace(audit, details=json.dumps(details, separators=(",", ":")))
