"""Ownership records of stored OpenAI objects (files, batches, vector stores, responses...).

Mixed into :class:`~keygate.store.sqlite.SQLiteStore`; the SQL is the common subset of SQLite and
PostgreSQL (see RULES: ``?`` placeholders, ``ON CONFLICT ... DO UPDATE``, ``RETURNING``).

One row per object id: its kind, the key record that owns it (NULL: nobody), and ``rev``, the value
of ``meta.objects_rev`` written by the transaction that last changed the row. Every change bumps
``objects_rev`` first (the meta row is the writers' lock, so revisions follow commit order), which
lets a gateway's in-process cache (``ownership.py``) read only the rows changed since it last
looked. Deleting an object clears its owner and keeps the row as a tombstone (owner NULL, kind
``deleted``), so the other gateways learn of the deletion the same way; ``meta`` on a row is
keygate's own small JSON about the object (a batch input file's line summary, a batch's hold).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..types import AuditRecord
from .base import ObjectChange, ObjectRow
from .sql import SqlConn, where

_DDL = """
    INSERT INTO meta (k, v) VALUES ('objects_rev', '0') ON CONFLICT (k) DO NOTHING;
    CREATE TABLE IF NOT EXISTS objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        key_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        rev BIGINT NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX IF NOT EXISTS objects_rev_idx ON objects (rev);
    CREATE INDEX IF NOT EXISTS objects_key ON objects (key_id, kind)
"""
MIGRATION = ("0005_objects", _DDL)
PG_MIGRATION = ("0005_objects", _DDL)

DELETED = "deleted"


_COLUMNS = "id, kind, key_id, created_at, rev, meta"


def _row(r: Sequence[Any]) -> ObjectRow:
    return ObjectRow(r[0], r[1], r[2], r[3], int(r[4]), json.loads(r[5]))


def _upsert(conn: SqlConn, rev: int, change: ObjectChange) -> None:
    kind = change.kind if change.key_id is not None else DELETED
    meta = json.dumps(change.meta) if change.meta is not None else None
    conn.execute(
        "INSERT INTO objects (id, kind, key_id, created_at, rev, meta) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, key_id = excluded.key_id,"
        " rev = excluded.rev, meta = COALESCE(?, objects.meta)",
        (change.id, kind, change.key_id, change.ts, rev, meta or "{}", meta),
    )


class ObjectsMixin:
    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[SqlConn]: ...
        def _conn(self) -> SqlConn: ...
        def _insert_audit(self, conn: SqlConn, record: AuditRecord) -> object: ...

    @staticmethod
    def _bump_objects_rev(conn: SqlConn) -> int:
        """The next ``objects_rev``, in the caller's transaction (the PostgreSQL store also
        notifies every instance of it)."""
        row = conn.execute(
            "UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'objects_rev' RETURNING v"
        ).fetchone()
        return int(row[0])

    def write_objects(self, changes: Sequence[ObjectChange]) -> None:
        """Record what the data plane saw (creates, deletes, batch holds), in one transaction."""
        if not changes:
            return
        with self._tx() as conn:
            rev = self._bump_objects_rev(conn)
            for change in changes:
                _upsert(conn, rev, change)

    def set_object_owner(
        self, object_id: str, kind: str, key_id: str | None, ts: float, audit: AuditRecord
    ) -> ObjectRow | None:
        """Assign (``key_id``) or unassign (None) an object, with its audit entry; the row before
        the change (None: there was none)."""
        with self._tx() as conn:
            found = conn.execute(
                f"SELECT {_COLUMNS} FROM objects WHERE id = ?",  # noqa: S608 (constant columns)
                (object_id,),
            ).fetchone()
            rev = self._bump_objects_rev(conn)
            _upsert(conn, rev, ObjectChange(object_id, kind, key_id, ts))
            self._insert_audit(conn, audit)
        return _row(found) if found is not None else None

    def get_object(self, object_id: str) -> ObjectRow | None:
        sql = f"SELECT {_COLUMNS} FROM objects WHERE id = ?"  # noqa: S608 (constant columns)
        found = self._conn().execute(sql, (object_id,)).fetchone()
        return _row(found) if found is not None else None

    def list_objects(
        self, key_id: str | None = None, kind: str | None = None, limit: int = 1000
    ) -> list[ObjectRow]:
        """Owned records (no tombstones), newest first."""
        clause, args = where(("key_id = ?", key_id), ("kind = ?", kind))
        sql = (
            f"SELECT {_COLUMNS} FROM objects WHERE key_id IS NOT NULL AND {clause}"  # noqa: S608 (constant fragments, bound values)
            " ORDER BY created_at DESC, id LIMIT ?"
        )
        return [_row(r) for r in self._conn().execute(sql, [*args, limit]).fetchall()]

    def objects_since(self, rev: int) -> tuple[int, list[ObjectRow]]:
        """The current ``objects_rev`` and every row changed after ``rev`` (tombstones included)."""
        conn = self._conn()
        now = int(conn.execute("SELECT v FROM meta WHERE k = 'objects_rev'").fetchone()[0])
        if now == rev:
            return now, []
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM objects WHERE rev > ? AND rev <= ? ORDER BY rev",  # noqa: S608
            (rev, now),
        ).fetchall()
        return now, [_row(r) for r in rows]

    def objects_rev(self) -> int:
        row = self._conn().execute("SELECT v FROM meta WHERE k = 'objects_rev'").fetchone()
        return int(row[0]) if row else 0


def changes_of(items: Iterable[ObjectChange]) -> list[ObjectChange]:
    """The last change of each object, in order (a batch that saw a create and a delete of one
    object writes the delete)."""
    last: dict[str, ObjectChange] = {}
    for change in items:
        last.pop(change.id, None)
        last[change.id] = change
    return list(last.values())
