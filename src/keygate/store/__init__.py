"""Persistent state behind one protocol (``store.base.Store``): SQLite by default, PostgreSQL for
several gateways on one database (chosen by the scheme of ``database_url``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..audit_chain import chain_key
from ..audit_export import AuditExporter
from ..config import Settings
from ..dburls import database_password, is_networked, parse_database_url, sqlite_path, without_password

if TYPE_CHECKING:
    from .postgres import PostgresStore

from .analytics_sql import AnomalyRow
from .base import (
    AdminToken,
    AuditEntry,
    ObjectChange,
    ObjectRow,
    Store,
    UpstreamDef,
    UpstreamKeyRow,
    UsageSummary,
)
from .sqlite import SQLiteStore

__all__ = [
    "AdminToken",
    "AnomalyRow",
    "AuditEntry",
    "ObjectChange",
    "ObjectRow",
    "SQLiteStore",
    "Store",
    "UpstreamDef",
    "UpstreamKeyRow",
    "UsageSummary",
    "export_view",
    "open_store",
    "open_url",
]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store the settings name, with the audit chain's key (from the
    pepper) and the audit export of ``audit:``."""
    key = chain_key(settings.pepper.reveal()) if settings.pepper else None
    exporter = AuditExporter(settings.audit)
    store: SQLiteStore | PostgresStore
    if settings.networked_database:
        from .postgres import PostgresStore  # psycopg is imported only by those who use it

        store = PostgresStore(
            without_password(settings.database_url),
            password=settings.database_password,
            poll_interval=settings.database_poll_interval,
            audit_key=key,
        )
    else:
        store = SQLiteStore(settings.database_path, key)
    if exporter.enabled:
        store.audit_export = lambda e: exporter.write(export_view(e))
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def export_view(e: AuditEntry) -> dict[str, Any]:
    """An entry as exported (and listed as JSON): every field, the time as a number and text."""
    return {
        "seq": e.id,
        "ts": e.ts,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.ts)),
        "actor": e.actor,
        "origin": e.origin,
        "action": e.action,
        "target": e.target,
        "details": e.details,
        "hash": e.hash,
    }


def open_url(
    url: str, env: Mapping[str, str], where: str, *, migrate: bool = True, audit_key: bytes | None = None
) -> Store:
    """The store at ``url`` (``keygate migrate --from/--to``), checked like ``database_url``; a
    password reference in it is read from ``env``. ``audit_key`` (from the pepper) lets it extend
    and chain the audit trail."""
    parse_database_url(url, where)
    store: SQLiteStore | PostgresStore
    if is_networked(url):
        from .postgres import PostgresStore

        store = PostgresStore(
            without_password(url), password=database_password(url, env, where), audit_key=audit_key
        )
    else:
        store = SQLiteStore(sqlite_path(url, where), audit_key)
    try:
        if migrate:
            store.migrate()
    except BaseException:
        store.close()
        raise
    return store
