"""SQLite store: the embedded default.

WAL mode, one connection per thread (the event loop reads key records, the recorder thread
writes usage in batches). Every change to key records bumps ``meta.keys_rev`` in the same
transaction; :meth:`SQLiteStore.keys_changed` notices another process's change through
``PRAGMA data_version`` (a shared-memory read, ~3 µs) and only then reads ``keys_rev``.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .admin_tokens import ADMIN_TOKENS_MIGRATION, AdminTokensMixin
from .analytics_sql import MIGRATION as _ANALYTICS_MIGRATION
from .analytics_sql import AnalyticsMixin
from .audit_sql import MIGRATION as _AUDIT_CHAIN_MIGRATION
from .audit_sql import AuditMixin
from .keys_sql import KeysMixin
from .objects_sql import MIGRATION as _OBJECTS_MIGRATION
from .objects_sql import ObjectsMixin
from .secrets_sql import ENABLES_MIGRATION as _ENABLES_MIGRATION
from .secrets_sql import MIGRATION as _SECRETS_MIGRATION
from .secrets_sql import SecretsMixin
from .usage_sql import MIGRATION as _USAGE_ESTIMATED_MIGRATION
from .usage_sql import UsageMixin

# Named migrations, applied once each in list order; the names applied are kept in
# schema_migrations, so features developed side by side can each append their own.
_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_core",
        """
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
    INSERT OR IGNORE INTO meta (k, v) VALUES ('keys_rev', '0');
    CREATE TABLE IF NOT EXISTS keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        revoked_at REAL,
        last_used_at REAL,
        team_id TEXT,
        upstream TEXT,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE IF NOT EXISTS usage (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        request_id TEXT NOT NULL,
        key_id TEXT,
        route TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        model TEXT,
        status INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        client_ip TEXT NOT NULL,
        upstream TEXT,
        stream INTEGER NOT NULL,
        error_code TEXT
    );
    CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_id, ts);
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        origin TEXT NOT NULL,
        details TEXT NOT NULL
    );
    """,
    ),
    (
        "0002_teams_and_policies",
        """
    ALTER TABLE keys ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE IF NOT EXISTS teams (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        policy TEXT NOT NULL DEFAULT '{}'
    );
    """,
    ),
    _SECRETS_MIGRATION,
    (
        "0003_spend",
        """
    CREATE TABLE IF NOT EXISTS spend (
        name TEXT PRIMARY KEY,
        spent REAL NOT NULL,
        held REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    ),
    ("0003_admin_tokens", ADMIN_TOKENS_MIGRATION),
    _ENABLES_MIGRATION,
    _USAGE_ESTIMATED_MIGRATION,
    _AUDIT_CHAIN_MIGRATION,
    _ANALYTICS_MIGRATION,
    _OBJECTS_MIGRATION,
]


class SQLiteStore(
    AuditMixin, KeysMixin, UsageMixin, SecretsMixin, AdminTokensMixin, AnalyticsMixin, ObjectsMixin
):
    """The embedded store. Thread-safe: each thread gets its own connection."""

    def __init__(self, path: Path, audit_key: bytes | None = None) -> None:
        self.path = path
        self.audit_key = audit_key  # the audit chain's MAC key (audit_chain.chain_key(pepper))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._data_version = -1
        self._keys_rev: str | None = None
        self._wal_map: mmap.mmap | None = None
        self._wal_file: BinaryIO | None = None
        self._wal_header = b""
        self._objects_seen = (b"", -1)  # objects_changed(): the WAL-index header and data_version

    def _wal_index(self) -> mmap.mmap | None:
        """The -shm file mapped read-only, once it exists (WAL mode); None before that.

        The file stays open until :meth:`close`, after every connection. Closing any descriptor
        of a file drops all of this process's POSIX locks on it, SQLite's included: another
        process could then take the -shm for unused and truncate it under our connections'
        mappings, and their next read would die of SIGBUS.
        """
        if self._wal_map is None:
            self._conn()  # opening a connection in WAL mode creates the -shm file
            try:
                if self._wal_file is None:
                    self._wal_file = open(f"{self.path}-shm", "rb")  # noqa: SIM115 - held open, see above
                self._wal_map = mmap.mmap(self._wal_file.fileno(), 48, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                return None
        return self._wal_map

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            if new:
                os.chmod(self.path, 0o600)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            self._audit_committed(False)
            raise
        conn.execute("COMMIT")
        self._audit_committed(True)
        # Our own commits do not move PRAGMA data_version on this connection: force a re-check.
        self._data_version = -1

    def migrate(self) -> None:
        with self._tx() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            applied = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            for name, script in _MIGRATIONS:
                if name in applied:
                    continue
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if name == _AUDIT_CHAIN_MIGRATION[0]:
                    self.chain_existing_audit(conn)  # once, with the chain's own migration
                conn.execute("INSERT INTO schema_migrations VALUES (?, strftime('%s', 'now'))", (name,))

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()
        # Only now, with SQLite's locks released by the connections themselves (see _wal_index).
        if self._wal_map is not None:
            self._wal_map.close()
            self._wal_map = None
        if self._wal_file is not None:
            self._wal_file.close()
            self._wal_file = None

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def keys_changed(self) -> bool:
        # Fast path, no system call and no GIL release: every commit by any connection rewrites
        # the WAL-index header at the start of the -shm file (its iChange counter increments per
        # transaction; https://www.sqlite.org/walformat.html). While those 48 bytes are unchanged,
        # nothing was committed since the last full check. The snapshot is taken before the full
        # check, so a commit racing with it is seen either by that check or by the next comparison.
        shm = self._wal_index()
        if shm is not None:
            header = shm[:48]
            if header == self._wal_header:
                return False
            self._wal_header = header
        conn = self._conn()
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return False
        self._data_version = version
        rev = conn.execute("SELECT v FROM meta WHERE k = 'keys_rev'").fetchone()[0]
        if rev == self._keys_rev:
            return False
        self._keys_rev = rev
        return True

    def objects_changed(self) -> bool:
        """Cheap check, like :meth:`keys_changed`: may an ownership record have changed since the
        last call? (True also for other commits; the caller then reads ``objects_rev``.)"""
        shm = self._wal_index()
        header = shm[:48] if shm is not None else b""
        if shm is not None and header == self._objects_seen[0]:
            return False
        version = self._conn().execute("PRAGMA data_version").fetchone()[0]
        if shm is not None and version == self._objects_seen[1]:
            self._objects_seen = (header, version)
            return False
        self._objects_seen = (header, version)
        return True
