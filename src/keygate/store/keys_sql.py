"""Client keys and teams: the records the key cache holds, in SQL both stores run.

Mixed into :class:`~keygate.store.sqlite.SQLiteStore` and
:class:`~keygate.store.postgres.PostgresStore`, which provide the connections. Every change bumps
``meta.keys_rev`` in its own transaction (:meth:`KeysMixin._bump_keys_rev`, which the PostgreSQL
store extends with a NOTIFY), so every gateway's ``keys_changed`` sees it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..types import AuditRecord, KeyRecord, Team
from .base import KEY_FIELDS
from .sql import SqlConn

KEY_COLUMNS = (
    "id, name, key_hash, hint, created_at, status, team_id, upstream, last_used_at, metadata, policy"
)
TEAM_COLUMNS = "id, name, created_at, policy"


def _key_from_row(row: Sequence[Any]) -> KeyRecord:
    return KeyRecord(
        id=row[0],
        name=row[1],
        key_hash=row[2],
        hint=row[3],
        created_at=row[4],
        status=row[5],
        team_id=row[6],
        upstream=row[7],
        last_used_at=row[8],
        metadata=json.loads(row[9]),
        policy=json.loads(row[10]),
    )


def _team_from_row(row: Sequence[Any]) -> Team:
    return Team(id=row[0], name=row[1], created_at=row[2], policy=json.loads(row[3]))


class KeysMixin:
    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[SqlConn]: ...
        def _conn(self) -> SqlConn: ...
        def _insert_audit(self, conn: SqlConn, record: AuditRecord) -> object: ...

    @staticmethod
    def _bump_keys_rev(conn: SqlConn) -> None:
        conn.execute("UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'keys_rev'")

    def insert_key(self, record: KeyRecord, audit: AuditRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    record.id,
                    record.name,
                    record.key_hash,
                    record.hint,
                    record.created_at,
                    record.status,
                    record.team_id,
                    record.upstream,
                    record.last_used_at,
                    json.dumps(record.metadata),
                    json.dumps(record.policy),
                ),
            )
            self._insert_audit(conn, audit)
            self._bump_keys_rev(conn)

    def update_key(self, key_id: str, changes: Mapping[str, Any], audit: AuditRecord) -> KeyRecord | None:
        if set(changes) - KEY_FIELDS:
            raise ValueError(f"cannot update {sorted(set(changes) - KEY_FIELDS)}")
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM keys WHERE id = ?", (key_id,)).fetchone() is None:
                return None
            for column, value in changes.items():
                if column in ("metadata", "policy"):
                    value = json.dumps(value)
                # column is one of KEY_FIELDS (checked above), never client text
                conn.execute(f"UPDATE keys SET {column} = ? WHERE id = ?", (value, key_id))  # noqa: S608
            self._insert_audit(conn, audit)
            self._bump_keys_rev(conn)
        return self.get_key(key_id)

    def get_key(self, key_id: str) -> KeyRecord | None:
        sql = f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?"  # noqa: S608 (constant columns)
        row = self._conn().execute(sql, (key_id,)).fetchone()
        return _key_from_row(row) if row else None

    def list_keys(self) -> list[KeyRecord]:
        sql = f"SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id"  # noqa: S608 (constant columns)
        rows = self._conn().execute(sql).fetchall()
        return [_key_from_row(r) for r in rows]

    def revoke_key(self, key_id: str, when: float, audit: AuditRecord) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE keys SET status = 'revoked', revoked_at = ? WHERE id = ? AND status != 'revoked'",
                (when, key_id),
            )
            if cur.rowcount:
                self._insert_audit(conn, audit)
                self._bump_keys_rev(conn)
            return cur.rowcount > 0

    # -- teams ------------------------------------------------------------------------------

    def insert_team(self, team: Team, audit: AuditRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO teams (id, name, created_at, policy) VALUES (?, ?, ?, ?)",
                (team.id, team.name, team.created_at, json.dumps(team.policy)),
            )
            self._insert_audit(conn, audit)
            self._bump_keys_rev(conn)

    def get_team(self, ref: str) -> Team | None:
        sql = f"SELECT {TEAM_COLUMNS} FROM teams WHERE id = ? OR name = ?"  # noqa: S608 (constant columns)
        row = self._conn().execute(sql, (ref, ref)).fetchone()
        return _team_from_row(row) if row else None

    def list_teams(self) -> list[Team]:
        sql = f"SELECT {TEAM_COLUMNS} FROM teams ORDER BY created_at, id"  # noqa: S608 (constant columns)
        return [_team_from_row(r) for r in self._conn().execute(sql).fetchall()]

    def update_team(self, team_id: str, policy: Mapping[str, Any], audit: AuditRecord) -> Team | None:
        with self._tx() as conn:
            cur = conn.execute("UPDATE teams SET policy = ? WHERE id = ?", (json.dumps(policy), team_id))
            if not cur.rowcount:
                return None
            self._insert_audit(conn, audit)
            self._bump_keys_rev(conn)
        return self.get_team(team_id)
