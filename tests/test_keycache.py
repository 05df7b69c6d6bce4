"""``keygate.keycache.KeyCache`` in process over a real SQLite store: lookups by hash without a query
per request, and every writer's change seen on the very next lookup."""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keygate import keycache
from keygate.keycache import KeyCache
from keygate.ops.audit import Actor
from keygate.store import SQLiteStore
from keygate.types import KeyRecord, Team

AUDIT = Actor("test", "local").record("test", "t")


def record(key_id: str, key_hash: str, **kw: Any) -> KeyRecord:
    return KeyRecord(id=key_id, name=key_id, key_hash=key_hash, hint="kg_...x", created_at=1.0, **kw)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    """The gateway's store, and another writer (the CLI, the admin API) on the same database."""
    mine, theirs = (
        SQLiteStore(tmp_path / "k.db", audit_key=b"t" * 32),
        SQLiteStore(tmp_path / "k.db", audit_key=b"t" * 32),
    )
    mine.migrate()
    yield mine, theirs
    mine.close()
    theirs.close()


class Counting:
    """The real store, counting full reads of the key records."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def list_keys(self) -> list[KeyRecord]:
        self.reads += 1
        return self._store.list_keys()


def test_lookup_reads_the_store_only_after_a_change(stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    mine, theirs = stores
    theirs.insert_key(record("key_1", "h1"), AUDIT)
    counting = Counting(mine)
    cache = KeyCache(counting)  # type: ignore[arg-type]
    assert counting.reads == 1 and len(cache) == 1
    for _ in range(100):
        found = cache.lookup("h1")
        assert found is not None and found.id == "key_1"
        assert cache.lookup("unknown") is None
    assert counting.reads == 1  # no query per request
    theirs.insert_key(record("key_2", "h2"), AUDIT)
    assert cache.lookup("h2") is not None and counting.reads == 2
    assert [r.id for r in cache.records()] == ["key_1", "key_2"] and counting.reads == 2
    theirs.insert_key(record("key_3", "h3"), AUDIT)
    assert [r.id for r in cache.records()] == ["key_1", "key_2", "key_3"] and counting.reads == 3
    assert len(cache) == 3


def test_a_revoke_or_update_by_another_writer_counts_on_the_next_lookup(
    stores: tuple[SQLiteStore, SQLiteStore],
) -> None:
    mine, theirs = stores
    theirs.insert_key(record("key_1", "h1"), AUDIT)
    cache = KeyCache(mine)
    found = cache.lookup("h1")
    assert found is not None and found.active
    theirs.update_key("key_1", {"policy": {"models": ["gpt-4o"]}}, AUDIT)
    updated = cache.lookup("h1")
    assert updated is not None and updated.policy == {"models": ["gpt-4o"]}
    theirs.revoke_key("key_1", 5.0, AUDIT)
    revoked = cache.lookup("h1")
    assert revoked is not None and revoked.status == "revoked" and not revoked.active


def test_teams_come_from_the_same_snapshot(stores: tuple[SQLiteStore, SQLiteStore]) -> None:
    mine, theirs = stores
    theirs.insert_team(Team("team_1", "red", 1.0, {"rpm": 5}), AUDIT)
    theirs.insert_key(record("key_1", "h1", team_id="team_1"), AUDIT)
    cache = KeyCache(mine)
    found = cache.lookup("h1")
    assert found is not None and cache.team(found.team_id) == Team("team_1", "red", 1.0, {"rpm": 5})
    assert cache.team(None) is None and cache.team("team_x") is None
    assert cache.find_team("red") == cache.find_team("team_1") and cache.find_team("blue") is None
    theirs.update_team("team_1", {"rpm": 1}, AUDIT)
    team = cache.find_team("red")
    assert team is not None and team.policy == {"rpm": 1}  # refreshed by find_team itself


def test_a_rotated_secret_works_until_its_grace_expiry(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = stores
    theirs.insert_key(record("key_1", "old"), AUDIT)
    cache = KeyCache(mine)
    now = time.time()
    theirs.rotate_key_secret("key_1", "new", "kg_...new", now + 60, {}, AUDIT)
    by_new, by_old = cache.lookup("new"), cache.lookup("old")
    assert by_new is not None and by_old is not None and by_new.id == by_old.id == "key_1"
    assert by_old.key_hash == "new"  # the one record, under its current secret
    monkeypatch.setattr(keycache, "time", types.SimpleNamespace(time=lambda: now + 61))
    assert cache.lookup("old") is None and cache.lookup("new") is not None
    # A grace period already over when the cache loads is not loaded at all.
    theirs.rotate_key_secret("key_1", "newer", "kg_...nwr", now + 30, {}, AUDIT)
    assert cache.lookup("new") is None and cache.lookup("newer") is not None


class Unreachable(Counting):
    """The real store, whose key reads fail while ``down`` (a networked database away)."""

    down = False

    def list_keys(self) -> list[KeyRecord]:
        if self.down:
            from keygate.errors import StoreUnavailable

            raise StoreUnavailable("The database is unreachable; try again when it is back.")
        return super().list_keys()


def test_a_reload_that_fails_keeps_the_snapshot_and_is_retried(
    stores: tuple[SQLiteStore, SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = stores
    theirs.insert_key(record("key_1", "h1"), AUDIT)
    flaky = Unreachable(mine)
    cache = KeyCache(flaky)  # type: ignore[arg-type]
    flaky.down = True
    theirs.insert_key(record("key_2", "h2"), AUDIT)  # a change it cannot read yet
    clock = [100.0]
    monkeypatch.setattr(keycache, "time", types.SimpleNamespace(time=time.time, monotonic=lambda: clock[0]))
    found = cache.lookup("h1")  # never raises: the old snapshot answers
    assert found is not None and found.id == "key_1" and cache.lookup("h2") is None
    reads = flaky.reads
    for _ in range(50):
        cache.lookup("h1")
    assert flaky.reads == reads  # no retry on every request
    flaky.down = False
    clock[0] += keycache.RETRY
    assert cache.lookup("h2") is not None  # retried once the second passed, without a new change
