"""Fixtures of the guard tests: a real SQLite store that knows two teams, and the key cache on it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keygate.keycache import KeyCache
from keygate.store import SQLiteStore
from keygate.types import AuditRecord, Team

TEAMS = (
    Team("team_research", "research", 0.0, {"models": ["gpt-4o*"]}),
    Team("team_embed", "embedders", 0.0, {"routes": ["embeddings"]}),
)


def audit(action: str, target: str) -> AuditRecord:
    return AuditRecord(time.time(), "test", "test", action, target)


@pytest.fixture
def guard_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A store holding :data:`TEAMS` (and no keys)."""
    store = SQLiteStore(tmp_path / "keys.db", audit_key=b"t" * 32)
    store.migrate()
    for team in TEAMS:
        store.insert_team(team, audit("teams.create", team.id))
    yield store
    store.close()


@pytest.fixture
def key_cache(guard_store: SQLiteStore) -> KeyCache:
    """Key and team records as the gateway caches them."""
    return KeyCache(guard_store)
