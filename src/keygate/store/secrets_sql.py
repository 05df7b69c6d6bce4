"""Stored upstream keys, store-defined upstreams and client-key grace secrets, in SQL both stores run.

Mixed into both stores (see :mod:`keygate.store.sql`). Upstream key rows hold only sealed
material (see :mod:`keygate.vault`); a retired key's sealed material is wiped (crypto-shredded).
Every change bumps ``meta.upstreams_rev`` so a running gateway reloads its key pool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..types import AuditRecord
from ..vault import Sealed
from .base import UpstreamDef, UpstreamKeyRow
from .sql import SqlConn

MIGRATION = (
    "0003_upstream_secrets",
    """
    INSERT OR IGNORE INTO meta (k, v) VALUES ('upstreams_rev', '0');
    CREATE TABLE IF NOT EXISTS upstream_defs (
        name TEXT PRIMARY KEY,
        base_url TEXT NOT NULL,
        allow_insecure INTEGER NOT NULL DEFAULT 0,
        fallback TEXT,
        ca_bundle TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS upstream_keys (
        id TEXT PRIMARY KEY,
        upstream TEXT NOT NULL,
        last4 TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL,
        status TEXT NOT NULL DEFAULT 'active',
        retire_at REAL,
        kek_id TEXT,
        wrapped_key BLOB,
        ciphertext BLOB
    );
    CREATE INDEX IF NOT EXISTS upstream_keys_upstream ON upstream_keys (upstream);
    CREATE TABLE IF NOT EXISTS key_grace_secrets (
        key_hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        expires_at REAL NOT NULL
    )
    """,
)

PG_MIGRATION = (
    "0003_upstream_secrets",
    """
    INSERT INTO meta (k, v) VALUES ('upstreams_rev', '0') ON CONFLICT (k) DO NOTHING;
    CREATE TABLE IF NOT EXISTS upstream_defs (
        name TEXT PRIMARY KEY,
        base_url TEXT NOT NULL,
        allow_insecure INTEGER NOT NULL DEFAULT 0,
        fallback TEXT,
        ca_bundle TEXT,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS upstream_keys (
        id TEXT PRIMARY KEY,
        upstream TEXT NOT NULL,
        last4 TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        status TEXT NOT NULL DEFAULT 'active',
        retire_at DOUBLE PRECISION,
        kek_id TEXT,
        wrapped_key BYTEA,
        ciphertext BYTEA
    );
    CREATE INDEX IF NOT EXISTS upstream_keys_upstream ON upstream_keys (upstream);
    CREATE TABLE IF NOT EXISTS key_grace_secrets (
        key_hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )
    """,
)


ENABLES_MIGRATION = (
    "0004_upstream_key_enables",
    """
    CREATE TABLE IF NOT EXISTS upstream_key_enables (
        key_id TEXT PRIMARY KEY,
        upstream TEXT NOT NULL,
        enabled_at REAL NOT NULL
    )
    """,
)

PG_ENABLES_MIGRATION = (
    "0004_upstream_key_enables",
    """
    CREATE TABLE IF NOT EXISTS upstream_key_enables (
        key_id TEXT PRIMARY KEY,
        upstream TEXT NOT NULL,
        enabled_at DOUBLE PRECISION NOT NULL
    )
    """,
)


_UK_COLUMNS = (
    "id, upstream, last4, fingerprint, created_at, last_used_at, status, retire_at, kek_id,"
    " wrapped_key, ciphertext"
)


def _uk_row(r: Any) -> UpstreamKeyRow:
    sealed = Sealed(r[8], bytes(r[9]), bytes(r[10])) if r[9] is not None else None
    return UpstreamKeyRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], sealed)


class SecretsMixin:
    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[SqlConn]: ...
        def _conn(self) -> SqlConn: ...
        def _insert_audit(self, conn: SqlConn, record: AuditRecord) -> object: ...
        @staticmethod
        def _bump_keys_rev(conn: SqlConn) -> None: ...

    @staticmethod
    def _bump_upstreams_rev(conn: SqlConn) -> None:
        conn.execute("UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'upstreams_rev'")

    def upstreams_rev(self) -> str:
        row = self._conn().execute("SELECT v FROM meta WHERE k = 'upstreams_rev'").fetchone()
        return str(row[0]) if row else "0"

    # -- store-defined upstreams -----------------------------------------------------------------

    def put_upstream_def(self, definition: UpstreamDef, audit: AuditRecord) -> None:
        d = definition
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO upstream_defs (name, base_url, allow_insecure, fallback, ca_bundle, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET base_url = excluded.base_url,"
                " allow_insecure = excluded.allow_insecure, fallback = excluded.fallback,"
                " ca_bundle = excluded.ca_bundle, created_at = excluded.created_at",
                (d.name, d.base_url, int(d.allow_insecure), d.fallback, d.ca_bundle, d.created_at),
            )
            self._insert_audit(conn, audit)
            self._bump_upstreams_rev(conn)

    def list_upstream_defs(self) -> list[UpstreamDef]:
        rows = self._conn().execute(
            "SELECT name, base_url, allow_insecure, fallback, ca_bundle, created_at FROM upstream_defs"
            " ORDER BY name"
        )
        return [UpstreamDef(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in rows]

    # -- upstream keys -----------------------------------------------------------------------------

    def insert_upstream_key(
        self, row: UpstreamKeyRow, audit: AuditRecord, retire_others_at: float | None = None
    ) -> None:
        """Add a key; with ``retire_others_at``, the upstream's other active keys start retiring."""
        assert row.sealed is not None
        with self._tx() as conn:
            if retire_others_at is not None:
                conn.execute(
                    "UPDATE upstream_keys SET status = 'retiring', retire_at = ?"
                    " WHERE upstream = ? AND status = 'active'",
                    (retire_others_at, row.upstream),
                )
            conn.execute(
                f"INSERT INTO upstream_keys ({_UK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    row.id,
                    row.upstream,
                    row.last4,
                    row.fingerprint,
                    row.created_at,
                    None,
                    row.status,
                    row.retire_at,
                    row.sealed.kek_id,
                    row.sealed.wrapped_key,
                    row.sealed.ciphertext,
                ),
            )
            self._insert_audit(conn, audit)
            self._bump_upstreams_rev(conn)

    def list_upstream_keys(self, upstream: str | None = None) -> list[UpstreamKeyRow]:
        sql = f"SELECT {_UK_COLUMNS} FROM upstream_keys"  # noqa: S608 (constant columns)
        args: tuple[str, ...] = ()
        if upstream is not None:
            sql += " WHERE upstream = ?"
            args = (upstream,)
        return [_uk_row(r) for r in self._conn().execute(sql + " ORDER BY created_at, id", args)]

    def retire_upstream_key(self, upstream: str, key_id: str, now: float, audit: AuditRecord) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE upstream_keys SET status = 'retired', retire_at = ?, kek_id = NULL,"
                " wrapped_key = NULL, ciphertext = NULL"
                " WHERE id = ? AND upstream = ? AND status != 'retired'",
                (now, key_id, upstream),
            )
            if cur.rowcount:
                self._insert_audit(conn, audit)
                self._bump_upstreams_rev(conn)
            return cur.rowcount > 0

    def sweep_retired_keys(self, now: float) -> int:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE upstream_keys SET status = 'retired', kek_id = NULL, wrapped_key = NULL,"
                " ciphertext = NULL WHERE status = 'retiring' AND retire_at <= ?",
                (now,),
            )
            if cur.rowcount:
                self._bump_upstreams_rev(conn)
            return cur.rowcount

    def rewrap_upstream_key(self, key_id: str, old_kek: str, new: Sealed) -> bool:
        """Replace one row's wrapped data key, only if it is still wrapped by ``old_kek``."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE upstream_keys SET kek_id = ?, wrapped_key = ? WHERE id = ? AND kek_id = ?",
                (new.kek_id, new.wrapped_key, key_id, old_kek),
            )
            return cur.rowcount > 0

    def touch_upstream_keys(self, used: Mapping[str, float]) -> None:
        if not used:
            return
        with self._tx() as conn:
            conn.executemany(
                "UPDATE upstream_keys SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                # In id order: two writers touching the same rows take their locks in one order.
                [(ts, kid, ts) for kid, ts in sorted(used.items())],
            )

    def enable_upstream_key(self, upstream: str, key_id: str, now: float, audit: AuditRecord) -> None:
        """Ask running gateways to put a key rejected (401/403) before ``now`` back into rotation."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO upstream_key_enables (key_id, upstream, enabled_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key_id) DO UPDATE SET upstream = excluded.upstream,"
                " enabled_at = excluded.enabled_at",
                (key_id, upstream, now),
            )
            self._insert_audit(conn, audit)
            self._bump_upstreams_rev(conn)

    def upstream_key_enables(self) -> dict[str, float]:
        """key id -> when an operator last put it back into rotation."""
        rows = self._conn().execute("SELECT key_id, enabled_at FROM upstream_key_enables")
        return {str(r[0]): float(r[1]) for r in rows}

    def count_sealed_upstream_keys(self) -> int:
        row = self._conn().execute("SELECT COUNT(*) FROM upstream_keys WHERE ciphertext IS NOT NULL")
        return int(row.fetchone()[0])

    # -- client keys: rotation with a grace period -------------------------------------------------

    def rotate_key_secret(
        self,
        key_id: str,
        new_hash: str,
        new_hint: str,
        grace_until: float,
        policy: Mapping[str, Any],
        audit: AuditRecord,
    ) -> bool:
        """Give a key record a new secret hash; the old hash keeps working until ``grace_until``."""
        with self._tx() as conn:
            row = conn.execute("SELECT key_hash FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return False
            conn.execute(
                "INSERT INTO key_grace_secrets (key_hash, key_id, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key_hash) DO UPDATE SET key_id = excluded.key_id,"
                " expires_at = excluded.expires_at",
                (row[0], key_id, grace_until),
            )
            conn.execute(
                "UPDATE keys SET key_hash = ?, hint = ?, policy = ? WHERE id = ?",
                (new_hash, new_hint, json.dumps(policy), key_id),
            )
            self._insert_audit(conn, audit)
            self._bump_keys_rev(conn)
            return True

    def list_grace_secrets(self, now: float) -> Iterator[tuple[str, str, float]]:
        """(old hash, key id, expiry) of rotated-away secrets still inside their grace period."""
        rows = self._conn().execute(
            "SELECT key_hash, key_id, expires_at FROM key_grace_secrets WHERE expires_at > ?", (now,)
        )
        return ((str(r[0]), str(r[1]), float(r[2])) for r in rows.fetchall())
