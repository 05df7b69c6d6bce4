"""Persistent state behind one protocol (``store.base.Store``): SQLite by default, PostgreSQL for
several gateways on one database (chosen by the scheme of ``database_url``)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import (
    Settings,
    database_password,
    is_networked,
    parse_database_url,
    sqlite_path,
    without_password,
)
from .base import AdminToken, AuditEntry, Store, UpstreamDef, UpstreamKeyRow, UsageSummary
from .sqlite import SQLiteStore

__all__ = [
    "AdminToken",
    "AuditEntry",
    "SQLiteStore",
    "Store",
    "UpstreamDef",
    "UpstreamKeyRow",
    "UsageSummary",
    "open_store",
    "open_url",
]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store the settings name."""
    if settings.networked_database:
        from .postgres import PostgresStore  # psycopg is imported only by those who use it

        pg = PostgresStore(
            without_password(settings.database_url),
            password=settings.database_password,
            poll_interval=settings.database_poll_interval,
        )
        try:
            pg.migrate()
        except BaseException:
            pg.close()
            raise
        return pg
    store = SQLiteStore(settings.database_path)
    store.migrate()
    return store


def open_url(url: str, env: Mapping[str, str], where: str, *, migrate: bool = True) -> Store:
    """The store at ``url`` (``keygate migrate --from/--to``), checked like ``database_url``; a
    password reference in it is read from ``env``."""
    parse_database_url(url, where)
    if is_networked(url):
        from .postgres import PostgresStore

        pg = PostgresStore(without_password(url), password=database_password(url, env, where))
        try:
            if migrate:
                pg.migrate()
        except BaseException:
            pg.close()
            raise
        return pg
    store = SQLiteStore(sqlite_path(url, where))
    if migrate:
        store.migrate()
    return store
