"""Connections to PostgreSQL as the SQL mixins see them (:class:`keygate.store.sql.SqlConn`).

The mixins write SQL once with ``?`` placeholders; :func:`translate` turns each statement into
psycopg's ``%s`` form once (cached). Every answer is read in full before its connection goes back
to the pool (:class:`Result`), so a caller may read rows after the statement's connection serves
another thread. A lost server, a refused connection or a pool that cannot hand out a connection
in time becomes :class:`~keygate.errors.StoreUnavailable` (503 on the admin API); integrity and
data errors pass through as psycopg raises them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool

from ..errors import StoreUnavailable

Row = tuple[Any, ...]
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
)


@functools.lru_cache(maxsize=512)
def translate(sql: str) -> bytes:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled). The mixins' SQL holds no
    ``?`` or ``%`` inside string literals, so a plain replacement is exact."""
    return sql.replace("%", "%%").replace("?", "%s").encode()


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The error an operator sees when PostgreSQL cannot be reached (no connection details)."""
    reason = type(exc).__name__
    return StoreUnavailable(f"The database is unreachable ({reason}); try again when it is back.")


class Result:
    """Rows read in full, and how many rows the statement changed."""

    __slots__ = ("_at", "rowcount", "rows")

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount
        self._at = 0

    def fetchone(self) -> Row | None:
        if self._at >= len(self.rows):
            return None
        self._at += 1
        return self.rows[self._at - 1]

    def fetchall(self) -> list[Row]:
        rest, self._at = self.rows[self._at :], len(self.rows)
        return rest

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


def _run(cur: psycopg.Cursor[Row], sql: str, parameters: Sequence[Any]) -> Result:
    cur.execute(translate(sql), parameters or None)
    rows = cur.fetchall() if cur.description is not None else []
    return Result(rows, cur.rowcount)


class PgConn:
    """One connection inside a transaction (:meth:`PostgresStore._tx`).

    ``bumped`` collects the revisions the transaction moved (``keys``, ``upstreams``), so the
    store can tell its own cache right after the commit without waiting for its notification.
    """

    __slots__ = ("bumped", "raw")

    def __init__(self, raw: psycopg.Connection[Row]) -> None:
        self.raw = raw
        self.bumped: dict[str, str] = {}

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Result:
        with self.raw.cursor() as cur:
            return _run(cur, sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Result:
        rows = list(parameters)
        if not rows:
            return Result([], 0)
        with self.raw.cursor() as cur:
            cur.executemany(translate(sql), rows)  # pipelined: one round trip for the batch
            return Result([], cur.rowcount)

    def copy_rows(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """``COPY ... FROM STDIN`` of these rows: one stream, no statement per row."""
        with self.raw.cursor() as cur, cur.copy(statement.encode()) as copy:
            for row in rows:
                copy.write_row(row)


def _nothing() -> None:
    return None


class PoolReader:
    """Statements outside a transaction, each on a connection borrowed for it (autocommit).

    ``before`` runs first (the store's fail-fast check); ``lost`` is told when the database could
    not be reached (not when the pool was merely busy: that says nothing about the database).
    """

    __slots__ = ("_before", "_lost", "_pool")

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]],
        before: Callable[[], None] = _nothing,
        lost: Callable[[], None] = _nothing,
    ) -> None:
        self._pool = pool
        self._before = before
        self._lost = lost

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Result:
        self._before()
        try:
            with self._pool.connection() as raw, raw.cursor() as cur:
                return _run(cur, sql, parameters)
        except psycopg_pool.PoolTimeout as exc:
            raise unavailable(exc) from None
        except CONNECTION_ERRORS as exc:
            self._lost()
            raise unavailable(exc) from None

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Result:
        self._before()
        try:
            with self._pool.connection() as raw, raw.transaction():
                return PgConn(raw).executemany(sql, parameters)
        except psycopg_pool.PoolTimeout as exc:
            raise unavailable(exc) from None
        except CONNECTION_ERRORS as exc:
            self._lost()
            raise unavailable(exc) from None
