"""Persistent state behind one protocol (``store.base.Store``): SQLite by default."""

from __future__ import annotations

import time
from typing import Any

from ..audit_chain import chain_key
from ..audit_export import AuditExporter
from ..config import Settings
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
    "export_view",
    "open_store",
]


def open_store(settings: Settings) -> Store:
    """Open (and migrate) the store the settings name, with the audit chain's key (from the
    pepper) and the audit export of ``audit:``."""
    store = SQLiteStore(
        settings.database_path, chain_key(settings.pepper.reveal()) if settings.pepper else None
    )
    exporter = AuditExporter(settings.audit)
    if exporter.enabled:
        store.audit_export = lambda e: exporter.write(export_view(e))
    store.migrate()
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
