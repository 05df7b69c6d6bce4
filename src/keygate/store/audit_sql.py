"""The audit trail: a hash chain written through one head row, in portable SQL.

Mixed into :class:`~keygate.store.sqlite.SQLiteStore` (and usable by a PostgreSQL store, which
translates the ``?`` placeholders). How an entry is sealed and a chain checked is
:mod:`keygate.audit_chain`; this module only stores it.

**One chain, whoever writes.** An entry is written inside the transaction of the change it
describes (:meth:`AuditMixin._insert_audit`): ``UPDATE audit_head SET seq = seq + 1 ... RETURNING
seq, hash`` takes the next position and the previous hash, the entry is sealed and inserted with
``id = seq``, and the head takes the new hash, all before the commit. The head update row-locks the
head in PostgreSQL until the commit, and SQLite's write lock (``BEGIN IMMEDIATE``) serialises every
writer, so two writers (the CLI beside a running gateway, several instances on one database) can
never both extend the same hash: the chain never forks. A head set back by hand makes the next
write collide with an existing ``id`` and fail, with the change it went with.

**Export.** Entries are handed to ``audit_export`` (the JSON-lines file and syslog of
``audit:``) after their transaction commits, in the thread that wrote them (never the event loop:
the data plane's entries are written by a write-behind thread).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..audit_chain import GENESIS, ChainRow, seal
from ..types import AuditRecord
from .base import AuditEntry
from .sql import SqlConn

# The chain columns and the head (whose hash starts as audit_chain.GENESIS, 64 zeros). The head
# row starts after the entries already stored (they predate the chain; ``chain_start`` says from
# where it holds); SQLiteStore.migrate then chains those entries too when it has the key (the
# pepper), and moves ``chain_start`` back to 1.
_HEAD_DDL = """
    CREATE TABLE IF NOT EXISTS audit_head (
        id INTEGER PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash TEXT NOT NULL,
        chain_start BIGINT NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash, chain_start)
        SELECT 1, COALESCE(MAX(id), 0),
            '0000000000000000000000000000000000000000000000000000000000000000',
            COALESCE(MAX(id), 0) + 1
        FROM audit WHERE 1 = 1
        ON CONFLICT (id) DO NOTHING;
    CREATE INDEX IF NOT EXISTS audit_action ON audit (action);
    CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor)
"""
# The same but for the columns: SQLite has no ADD COLUMN IF NOT EXISTS.
MIGRATION = (
    "0005_audit_chain",
    "ALTER TABLE audit ADD COLUMN prev TEXT; ALTER TABLE audit ADD COLUMN hash TEXT;" + _HEAD_DDL,
)
PG_MIGRATION = (
    "0005_audit_chain",
    "ALTER TABLE audit ADD COLUMN IF NOT EXISTS prev TEXT;"
    " ALTER TABLE audit ADD COLUMN IF NOT EXISTS hash TEXT;" + _HEAD_DDL,
)

log = logging.getLogger("keygate.audit")

_CHAIN_COLUMNS = "id, ts, actor, origin, action, target, details, prev, hash"


def details_of(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw}
    return value if isinstance(value, dict) else {"value": value}


class AuditMixin:
    """Audit writes and reads; the connections come from the store class."""

    audit_key: bytes | None = None  # chain_key(pepper); without it, no entry can be written
    audit_export: Callable[[AuditEntry], None] | None = None

    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[SqlConn]: ...
        def _conn(self) -> SqlConn: ...

    @property
    def _audit_local(self) -> threading.local:
        """Per store and thread: the entries of the open transaction, to export once committed."""
        found: threading.local | None = self.__dict__.get("_audit_tls")
        if found is None:
            found = self.__dict__.setdefault("_audit_tls", threading.local())
        return found

    def _insert_audit(self, conn: Any, record: AuditRecord) -> AuditEntry:
        """Extend the chain by ``record`` inside the caller's transaction ``conn``."""
        key = self.audit_key
        if key is None:
            raise RuntimeError("this store was opened without the audit chain key (it comes from the pepper)")
        head = conn.execute("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash").fetchone()
        if head is None:
            raise RuntimeError("the audit head row is missing: run the migrations")
        seq, prev = int(head[0]), str(head[1])
        r = record
        digest = seal(key, seq, prev, r.ts, r.actor, r.origin, r.action, r.target, r.details)
        conn.execute(
            f"INSERT INTO audit ({_CHAIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (seq, r.ts, r.actor, r.origin, r.action, r.target, r.details, prev, digest),
        )
        conn.execute("UPDATE audit_head SET hash = ? WHERE id = 1", (digest,))
        entry = AuditEntry(seq, r.ts, r.actor, r.action, r.target, r.origin, details_of(r.details), digest)
        if self.audit_export is not None:
            pending: list[AuditEntry] | None = getattr(self._audit_local, "pending", None)
            if pending is None:
                pending = self._audit_local.pending = []
            pending.append(entry)
        return entry

    def _audit_committed(self, committed: bool) -> None:
        """Called by the store's transaction when it ends: export what it wrote, if it committed."""
        pending: list[AuditEntry] | None = getattr(self._audit_local, "pending", None)
        if not pending:
            return
        self._audit_local.pending = []
        export = self.audit_export
        if committed and export is not None:
            for entry in pending:
                try:
                    export(entry)
                except Exception:  # committed already: a failed copy must not look like a failed write
                    log.exception("audit export failed", extra={"seq": entry.id})

    def chain_existing_audit(self, conn: Any) -> int:
        """Chain the entries written before the chain existed (once, by the migration that adds
        it, with the key at hand); how many. Without the key they stay outside the chain."""
        key = self.audit_key
        if key is None:
            return 0
        start = conn.execute("SELECT chain_start FROM audit_head WHERE id = 1").fetchone()[0]
        rows = conn.execute(
            "SELECT id, ts, actor, origin, action, target, details FROM audit WHERE id < ? ORDER BY id",
            (start,),
        ).fetchall()
        prev, seq = GENESIS, 0
        for row in rows:
            seq += 1
            if int(row[0]) != seq:  # a gapless sequence (ids only ever grew, so no collision)
                conn.execute("UPDATE audit SET id = ? WHERE id = ?", (seq, row[0]))
            digest = seal(key, seq, prev, row[1], row[2], row[3], row[4], row[5], row[6])
            conn.execute("UPDATE audit SET prev = ?, hash = ? WHERE id = ?", (prev, digest, seq))
            prev = digest
        conn.execute("UPDATE audit_head SET seq = ?, hash = ?, chain_start = 1 WHERE id = 1", (seq, prev))
        return len(rows)

    def write_audit(self, record: AuditRecord) -> None:
        with self._tx() as conn:
            self._insert_audit(conn, record)

    def list_audit(
        self,
        limit: int = 100,
        action: str | None = None,
        *,
        actor: str | None = None,
        since: float | None = None,
    ) -> list[AuditEntry]:
        """The newest entries first; ``action`` matches exactly, or a prefix when it ends in ``.``
        or ``*`` (``keys.``)."""
        where: list[str] = []
        args: list[Any] = []
        if action is not None:
            if action.endswith(("*", ".")):
                prefix = action.rstrip("*")
                where.append("substr(action, 1, CAST(? AS INTEGER)) = ?")
                args += [len(prefix), prefix]
            else:
                where.append("action = ?")
                args.append(action)
        if actor is not None:
            where.append("actor = ?")
            args.append(actor)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        sql = "SELECT id, ts, actor, action, target, origin, details, hash FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], details_of(r[6]), r[7])
            for r in self._conn().execute(sql, args).fetchall()
        ]

    def audit_head(self) -> tuple[int, str, int]:
        """(seq, hash) of the last entry written, and the first entry of the chain."""
        row = self._conn().execute("SELECT seq, hash, chain_start FROM audit_head WHERE id = 1").fetchone()
        if row is None:
            return 0, GENESIS, 1
        return int(row[0]), str(row[1]), int(row[2])

    def audit_chain_rows(self, start: int = 1) -> list[ChainRow]:
        """Every stored entry from ``start`` on, in stored order, with its chain fields."""
        sql = f"SELECT {_CHAIN_COLUMNS} FROM audit WHERE id >= ? ORDER BY id"  # noqa: S608
        return [ChainRow(*r) for r in self._conn().execute(sql, (start,)).fetchall()]
