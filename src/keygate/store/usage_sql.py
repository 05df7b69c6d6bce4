"""Usage rows and budget spend: the append-mostly tables, in SQL both stores run.

Mixed into both stores (see :mod:`keygate.store.sql`), which provide the connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from ..types import UsageRow
from .base import UsageSummary
from .sql import SqlConn, where

# Added after 0001_core: whether a row's token counts are the request's reservation (no usage
# was reported). Rows written before it are reported counts (0). An ALTER TABLE ADD COLUMN with a
# constant default rewrites nothing, so it is instant also on a large table.
MIGRATION = (
    "0004_usage_estimated",
    "ALTER TABLE usage ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;",
)

PG_MIGRATION = (
    "0004_usage_estimated",
    "ALTER TABLE usage ADD COLUMN IF NOT EXISTS estimated INTEGER NOT NULL DEFAULT 0",
)

USAGE_COLUMNS = (
    "ts, request_id, key_id, route, method, path, model, status, prompt_tokens, completion_tokens,"
    " cached_tokens, latency_ms, client_ip, upstream, stream, error_code, estimated"
)


class UsageMixin:
    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[SqlConn]: ...
        def _conn(self) -> SqlConn: ...

    # -- usage ------------------------------------------------------------------------------

    def write_usage(self, rows: Sequence[UsageRow]) -> None:
        if not rows:
            return
        last_used: dict[str, float] = {}
        for r in rows:
            if r.key_id is not None and r.status < 400:
                last_used[r.key_id] = max(r.ts, last_used.get(r.key_id, 0.0))
        with self._tx() as conn:
            self._insert_usage(conn, rows)
            conn.executemany(
                "UPDATE keys SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                # In id order: two writers touching the same rows take their locks in one order.
                [(ts, key_id, ts) for key_id, ts in sorted(last_used.items())],
            )

    @staticmethod
    def usage_values(rows: Sequence[UsageRow]) -> list[tuple[Any, ...]]:
        """The rows as values of :data:`USAGE_COLUMNS`, in order."""
        return [
            (
                r.ts,
                r.request_id,
                r.key_id,
                r.route,
                r.method,
                r.path,
                r.model,
                r.status,
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.latency_ms,
                r.client_ip,
                r.upstream,
                int(r.stream),
                r.error_code,
                int(r.estimated),
            )
            for r in rows
        ]

    def _insert_usage(self, conn: SqlConn, rows: Sequence[UsageRow]) -> None:
        """The rows themselves (the PostgreSQL store streams them with COPY instead)."""
        conn.executemany(
            f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({', '.join('?' * 17)})",  # noqa: S608 (constants)
            self.usage_values(rows),
        )

    def usage_summary(self, key_id: str | None = None, since: float | None = None) -> list[UsageSummary]:
        clause, args = where(("key_id = ?", key_id), ("ts >= ?", since))
        sql = (
            "SELECT key_id, COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(prompt_tokens),"  # noqa: S608
            " SUM(completion_tokens),"
            f" MIN(ts), MAX(ts), SUM(estimated) FROM usage WHERE {clause} GROUP BY key_id ORDER BY key_id"
        )
        rows = self._conn().execute(sql, args).fetchall()
        return [
            # int(): PostgreSQL sums BIGINT columns as NUMERIC (Decimal)
            UsageSummary(
                r[0], int(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0), r[5], r[6], int(r[7] or 0)
            )
            for r in rows
        ]

    def load_spend(self) -> dict[str, tuple[float, float]]:
        rows = self._conn().execute("SELECT name, spent, held FROM spend").fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def save_spend(self, rows: Sequence[tuple[str, float, float]], ts: float) -> None:
        """Absolute ``(name, spent, held)`` values of the budget counters that changed."""
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO spend (name, spent, held, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET spent = excluded.spent, held = excluded.held,"
                " updated_at = excluded.updated_at",
                [(n, spent, held, ts) for n, spent, held in rows],
            )
