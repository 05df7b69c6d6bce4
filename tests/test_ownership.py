"""keygate.ownership: the in-process owner cache, in step with the store across processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from keygate.ownership import Ownership
from keygate.store import ObjectChange, SQLiteStore
from keygate.types import AuditRecord


def _store(path: Path) -> SQLiteStore:
    store = SQLiteStore(path, audit_key=b"t" * 32)
    store.migrate()
    return store


def _audit(action: str, target: str) -> AuditRecord:
    return AuditRecord(time.time(), "test", "local", action, target)


def test_what_it_sees_is_at_once_its_own_and_soon_the_stores(tmp_path: Path) -> None:
    store = _store(tmp_path / "k.db")
    book = Ownership(store, interval=60.0)  # (no timer flush in this test: the kick writes)

    async def run() -> None:
        await book.start()
        book.record("file-1", "file", "key_a")
        assert book.owner("file-1") == ("file", "key_a")  # before any write: this process knows
        for _ in range(200):
            if store.get_object("file-1") is not None:
                break
            await asyncio.sleep(0.005)  # the writer was started at once, not on the 60 s timer
        book.forget("file-1")
        assert book.owner("file-1") is None
        await book.close()

    asyncio.run(run())
    row = store.get_object("file-1")
    assert row is not None and row.key_id is None and row.kind == "deleted"  # a tombstone
    assert store.list_objects() == []
    store.close()


def test_another_process_change_is_seen_on_the_next_check(tmp_path: Path) -> None:
    mine, theirs = _store(tmp_path / "k.db"), SQLiteStore(tmp_path / "k.db", audit_key=b"t" * 32)
    book = Ownership(mine)
    assert book.owner("vs_1") is None
    theirs.write_objects([ObjectChange("vs_1", "vector_store", "key_b", time.time())])
    assert book.owner("vs_1") == ("vector_store", "key_b")
    theirs.set_object_owner("vs_1", "vector_store", "key_c", time.time(), _audit("objects.assign", "vs_1"))
    assert book.owner("vs_1") == ("vector_store", "key_c")
    theirs.set_object_owner("vs_1", "vector_store", None, time.time(), _audit("objects.unassign", "vs_1"))
    assert book.owner("vs_1") is None
    # only the rows changed since the last revision are read again
    rev, rows = mine.objects_since(mine.objects_rev())
    assert rows == [] and rev == mine.objects_rev()
    # a new cache loads every owned record at start
    theirs.write_objects([ObjectChange("file-9", "file", "key_a", time.time(), {"summary": {"lines": 1}})])
    fresh = Ownership(mine)
    assert fresh.owner("file-9") == ("file", "key_a") and fresh.meta("file-9") == {"summary": {"lines": 1}}
    assert len(fresh) == 1
    mine.close()
    theirs.close()


def test_the_check_costs_at_most_5_microseconds(tmp_path: Path) -> None:
    store = _store(tmp_path / "k.db")
    store.write_objects(
        [ObjectChange(f"file-{n}", "file", f"key_{n % 7}", time.time()) for n in range(10_000)]
    )
    book = Ownership(store)
    book.owner("file-1")
    n = 20_000
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _i in range(n):
            book.owner("file-1234")
        best = min(best, (time.perf_counter() - start) / n)
    assert best < 5e-6, f"{best * 1e6:.2f} µs per check"
    store.close()
