"""PostgreSQL store: many gateways, one database.

The same SQL mixins as the SQLite store (:mod:`keygate.store.sql`), on a
``psycopg_pool.ConnectionPool`` of psycopg 3 connections (autocommit; a change runs in an explicit
transaction with its audit row). Chosen over asyncpg by measurement (docs/deployment.md): the
Store protocol is synchronous and called from several threads, which a sync pool serves directly.

Change detection without a query per request: every change to keys, teams, upstreams, upstream
keys or enables bumps its revision in ``meta`` *and* sends ``NOTIFY keygate_changes`` in the same
transaction. A listener thread (:class:`~keygate.store.pg_listen.Listener`) turns notifications
into flags, and reads both revisions at least every ``poll_interval`` seconds as a safety net, so
a lost notification delays a revoke by at most that long. :meth:`PostgresStore.keys_changed` reads
one flag; :meth:`PostgresStore.upstreams_rev` one cached string. While the listener cannot reach
the database, the store fails fast (:class:`~keygate.errors.StoreUnavailable`) instead of making
each caller wait for a connection timeout, and the key cache keeps serving what it has.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from ..errors import StoreUnavailable
from ..types import Secret, UsageRow
from . import pg_schema
from .admin_tokens import AdminTokensMixin
from .analytics_sql import AnalyticsMixin
from .audit_sql import AuditMixin
from .keys_sql import KeysMixin
from .objects_sql import ObjectsMixin
from .pg_conn import CONNECTION_ERRORS, PgConn, PoolReader, Row, unavailable
from .pg_listen import CHANNEL, Listener
from .secrets_sql import SecretsMixin
from .sql import SqlConn
from .usage_sql import USAGE_COLUMNS, UsageMixin

POOL_SIZE = 10  # connections per store: the event loop, three writer threads, admin workers


def connect_kwargs(password: Secret | None, connect_timeout: float) -> dict[str, Any]:
    """libpq options for every connection: a short connect timeout and TCP keepalives, so a
    database that vanished from the network is noticed in seconds, not at the kernel's timeout."""
    kwargs: dict[str, Any] = {
        "connect_timeout": max(1, int(connect_timeout)),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "tcp_user_timeout": int(connect_timeout * 1000),
        "application_name": "keygate",
    }
    if password:
        kwargs["password"] = password.reveal()
    return kwargs


class PostgresStore(
    AuditMixin, KeysMixin, UsageMixin, SecretsMixin, AdminTokensMixin, AnalyticsMixin, ObjectsMixin
):
    """The networked store. Thread-safe: each call borrows a pooled connection."""

    def __init__(
        self,
        url: str,
        *,
        password: Secret | None = None,
        poll_interval: float = 1.0,
        pool_size: int = POOL_SIZE,
        connect_timeout: float = 3.0,
        pool_timeout: float = 5.0,
        audit_key: bytes | None = None,
    ) -> None:
        self.url = url
        self.audit_key = audit_key  # the audit chain's MAC key (audit_chain.chain_key(pepper))
        self._kwargs = connect_kwargs(password, connect_timeout)
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={**self._kwargs, "autocommit": True},
            open=False,
            timeout=pool_timeout,
            name="keygate",
        )
        self._pool.open(wait=False)
        self._listener = Listener(url, self._kwargs, poll_interval, self._pool.check)
        self._reader = PoolReader(self._pool, self._fail_fast, self._listener.suspect)
        self._start_lock = threading.Lock()
        self._closed = False

    # -- connections -----------------------------------------------------------------------

    def _fail_fast(self) -> None:
        if self._listener.running and self._listener.down:
            raise StoreUnavailable("The database is unreachable; try again when it is back.")

    def _conn(self) -> SqlConn:
        return self._reader

    @contextmanager
    def _tx(self) -> Iterator[SqlConn]:
        self._fail_fast()
        try:
            with self._pool.connection() as raw:
                conn = PgConn(raw)
                with raw.transaction():
                    yield conn
        except psycopg_pool.PoolTimeout as exc:  # busy, which says nothing about the database
            self._audit_committed(False)
            raise unavailable(exc) from None
        except CONNECTION_ERRORS as exc:
            self._audit_committed(False)
            self._listener.suspect()
            raise unavailable(exc) from None
        except BaseException:
            self._audit_committed(False)
            raise
        self._audit_committed(True)
        if conn.bumped:
            self._listener.committed(conn.bumped)

    def migrate(self) -> None:
        """Create or upgrade the schema (safe while other instances do the same)."""
        try:
            with self._pool.connection() as raw:
                pg_schema.apply(raw)
        except CONNECTION_ERRORS as exc:
            raise unavailable(exc) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._listener.stop()
        self._pool.close()

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers now (``/readyz``)."""
        self._conn().execute("SELECT 1").fetchone()

    # -- revisions and notifications -----------------------------------------------------------

    def _listening(self) -> Listener:
        if not self._listener.running:
            with self._start_lock:
                if not self._listener.running and not self._closed:
                    self._listener.start()
        return self._listener

    @staticmethod
    def _bump(conn: SqlConn, what: str) -> str:
        row = conn.execute(
            "UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = ? RETURNING v",
            (f"{what}_rev",),
        ).fetchone()
        rev = str(row[0]) if row is not None else "0"
        conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, f"{what}:{rev}"))
        if isinstance(conn, PgConn):
            conn.bumped[what] = rev
        return rev

    @staticmethod
    def _bump_keys_rev(conn: SqlConn) -> None:
        PostgresStore._bump(conn, "keys")

    @staticmethod
    def _bump_upstreams_rev(conn: SqlConn) -> None:
        PostgresStore._bump(conn, "upstreams")

    @staticmethod
    def _bump_objects_rev(conn: SqlConn) -> int:
        return int(PostgresStore._bump(conn, "objects"))

    def objects_changed(self) -> bool:
        # As keys_changed: one flag, set by the listener on a notification or a newer revision.
        listener = self._listener if self._listener.running else self._listening()
        if listener.objects_flag:
            listener.objects_flag = False
            return True
        return False

    def keys_changed(self) -> bool:
        # One attribute read while nothing changed: the listener thread sets the flag.
        listener = self._listener if self._listener.running else self._listening()
        if listener.keys_flag:
            listener.keys_flag = False
            return True
        return False

    def upstreams_rev(self) -> str:
        return self._listening().upstreams_rev()

    # -- usage: PostgreSQL text cannot hold NUL --------------------------------------------------

    def write_usage(self, rows: Sequence[UsageRow]) -> None:
        super().write_usage([_without_nul(r) for r in rows])

    def _insert_usage(self, conn: SqlConn, rows: Sequence[UsageRow]) -> None:
        # COPY: a quarter of executemany's client CPU for a 200-row batch (docs/deployment.md).
        assert isinstance(conn, PgConn)
        conn.copy_rows(f"COPY usage ({USAGE_COLUMNS}) FROM STDIN", self.usage_values(rows))


_TEXT_FIELDS = tuple(f.name for f in dataclasses.fields(UsageRow) if "str" in str(f.type))


def _without_nul(row: UsageRow) -> UsageRow:
    """A row whose text fields (some from the client: model, path) hold no NUL character, which
    PostgreSQL refuses in TEXT; one such row would otherwise fail its whole batch forever."""
    changes: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(row, name)
        if value is not None and "\x00" in value:
            changes[name] = value.replace("\x00", "\ufffd")
    return dataclasses.replace(row, **changes) if changes else row
