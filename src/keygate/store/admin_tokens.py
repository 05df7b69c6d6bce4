"""Admin tokens, in SQL both stores run.

A mixin of both stores (see :mod:`keygate.store.sql`). Only ``HMAC-SHA256(pepper, token)`` is
stored. Audit entries are written by ``_insert_audit`` (:mod:`keygate.store.audit_sql`) inside the
transaction of the change they describe.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..types import AuditRecord
from .base import AdminToken
from .sql import SqlConn

ADMIN_TOKENS_MIGRATION = """
    CREATE TABLE IF NOT EXISTS admin_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        revoked_at REAL
    );
    CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)
"""

PG_ADMIN_TOKENS_MIGRATION = """
    CREATE TABLE IF NOT EXISTS admin_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts)
"""

_COLUMNS = "id, name, token_hash, hint, role, created_at, status, revoked_at"


def _token(row: Sequence[Any]) -> AdminToken:
    return AdminToken(*row)


class AdminTokensMixin:
    """Admin token queries; the connection handling comes from the store class."""

    if TYPE_CHECKING:

        def _conn(self) -> SqlConn: ...
        def _tx(self) -> AbstractContextManager[SqlConn]: ...
        def _insert_audit(self, conn: SqlConn, record: AuditRecord) -> object: ...

    def insert_admin_token(self, token: AdminToken, audit: AuditRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO admin_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    token.id,
                    token.name,
                    token.token_hash,
                    token.hint,
                    token.role,
                    token.created_at,
                    token.status,
                    token.revoked_at,
                ),
            )
            self._insert_audit(conn, audit)

    def admin_token_by_hash(self, token_hash: str) -> AdminToken | None:
        sql = f"SELECT {_COLUMNS} FROM admin_tokens WHERE token_hash = ?"  # noqa: S608 (constant columns)
        row = self._conn().execute(sql, (token_hash,)).fetchone()
        return _token(row) if row else None

    def get_admin_token(self, token_id: str) -> AdminToken | None:
        sql = f"SELECT {_COLUMNS} FROM admin_tokens WHERE id = ?"  # noqa: S608 (constant columns)
        row = self._conn().execute(sql, (token_id,)).fetchone()
        return _token(row) if row else None

    def list_admin_tokens(self) -> list[AdminToken]:
        sql = f"SELECT {_COLUMNS} FROM admin_tokens ORDER BY created_at, id"  # noqa: S608 (constant columns)
        return [_token(r) for r in self._conn().execute(sql).fetchall()]

    def revoke_admin_token(self, token_id: str, when: float, audit: AuditRecord) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE admin_tokens SET status = 'revoked', revoked_at = ?"
                " WHERE id = ? AND status = 'active'",
                (when, token_id),
            )
            if cur.rowcount:
                self._insert_audit(conn, audit)
            return cur.rowcount > 0
