"""What the SQL mixins need from a connection, whichever database is behind it.

The mixins (``keys_sql``, ``usage_sql``, ``secrets_sql``, ``admin_tokens``) are written once, in
the SQL that SQLite >= 3.35 and PostgreSQL 15 both run (``?`` placeholders, ``ON CONFLICT``,
``RETURNING``, no ``INSERT OR ...``, no SQLite-only functions). A ``sqlite3.Connection`` is such a
connection as it is; the PostgreSQL store hands the mixins a wrapper
(:class:`keygate.store.pg_conn.PgConn`) that translates the placeholders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Rows(Protocol):
    """The answer to one statement: its rows and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class SqlConn(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Rows: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Rows: ...


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause of the ``(fragment, value)`` conditions whose value is not None (each
    fragment a constant holding one ``?``), and their values in order; ``1=1`` when none apply.
    Only constant fragments are joined: every value is a bound parameter."""
    given = [(fragment, value) for fragment, value in conditions if value is not None]
    clause = " AND ".join(fragment for fragment, _ in given) or "1=1"
    return clause, [value for _, value in given]
