"""Persistent state behind one protocol (``store.base.Store``): SQLite by default."""

from __future__ import annotations

from ..config import Settings
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
    "AuditEntry",
    "ObjectChange",
    "ObjectRow",
    "SQLiteStore",
    "Store",
    "UpstreamDef",
    "UpstreamKeyRow",
    "UsageSummary",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store the settings name."""
    store = SQLiteStore(settings.database_path)
    store.migrate()
    return store
