"""The rotation watch in process: client keys due for rotation or expiry are logged, at start and
then hourly, from the key cache on a real store."""

from __future__ import annotations

import asyncio
import time

from keygate import keys
from keygate.guards.rotation_watch import RotationWatch
from keygate.keycache import KeyCache
from keygate.store import SQLiteStore
from keygate.times import iso
from keygate.types import KeyRecord, Secret

from .common import logged
from .conftest import audit

DAY = 86400.0


def _add(store: SQLiteStore, name: str, created: float, **policy: object) -> KeyRecord:
    issued = keys.issue(Secret("pepper-for-the-rotation-tests"))
    record = KeyRecord(keys.new_id(), name, issued.key_hash, issued.hint, created, policy=dict(policy))
    store.insert_key(record, audit("keys.create", record.id))
    return record


def test_due_keys_are_logged_with_their_reason_and_date(
    guard_store: SQLiteStore, key_cache: KeyCache
) -> None:
    now = time.time()
    overdue = _add(guard_store, "old", now - 40 * DAY, rotate_every=30 * DAY)
    soon = _add(guard_store, "soon", now, expires_at=iso(now + 2 * DAY))
    _add(guard_store, "later", now, expires_at=iso(now + 30 * DAY), rotate_every=90 * DAY)
    _add(guard_store, "trap", now - 400 * DAY, rotate_every=DAY, honeytoken=True)  # never warned about
    watch = RotationWatch(key_cache, warning_days=7)
    with logged("keygate") as records:
        assert watch.check() == 2
    warnings = {r.key_name: r for r in records}  # type: ignore[attr-defined]
    assert set(warnings) == {"old", "soon"}
    old, due = warnings["old"], warnings["soon"]
    assert old.getMessage() == "client key due for rotation" and old.key_id == overdue.id  # type: ignore[attr-defined]
    assert old.overdue is True and old.due_at == iso(now - 10 * DAY)  # type: ignore[attr-defined]
    assert due.getMessage() == "client key due for expiry" and due.key_id == soon.id  # type: ignore[attr-defined]
    assert due.overdue is False and due.due_at == iso(now + 2 * DAY)  # type: ignore[attr-defined]
    assert all(r.levelname == "WARNING" for r in records)


def test_the_watch_checks_at_start_and_stops_cleanly(guard_store: SQLiteStore, key_cache: KeyCache) -> None:
    _add(guard_store, "old", time.time() - 40 * DAY, rotate_every=30 * DAY)
    watch = RotationWatch(key_cache, warning_days=7)

    async def run() -> int:
        with logged("keygate") as records:
            await watch.start()
            await asyncio.sleep(0.01)
            await watch.stop()
        return sum(r.getMessage() == "client key due for rotation" for r in records)

    assert asyncio.run(run()) == 1
    asyncio.run(RotationWatch(key_cache, 7).stop())  # never started: nothing to stop


def test_a_failing_check_is_logged_and_the_watch_goes_on(
    guard_store: SQLiteStore, key_cache: KeyCache
) -> None:
    broken = _add(guard_store, "broken", time.time())
    # A policy that is not an object (a hand-edited database, say): the check cannot read it.
    guard_store.update_key(broken.id, {"policy": ["rotate_every"]}, audit("keys.update", broken.id))
    watch = RotationWatch(key_cache, warning_days=7)

    async def run() -> tuple[list[str], bool]:
        with logged("keygate") as records:
            await watch.start()
            await asyncio.sleep(0.01)
            alive = watch._task is not None and not watch._task.done()
            await watch.stop()
        return [r.getMessage() for r in records], alive

    messages, alive = asyncio.run(run())
    assert messages == ["rotation check failed"] and alive  # logged, and the next check still comes
