"""Persistent state behind one protocol: SQLite by default (``store.sqlite``)."""

from __future__ import annotations

from ..config import Settings
from .base import Store, UsageSummary
from .sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "UsageSummary", "open_store"]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store the settings name."""
    store = SQLiteStore(settings.database_path)
    store.migrate()
    return store
