"""Who owns each stored OpenAI object, cached in process for the request path.

Every gateway keeps the owner of every object it knows (``id -> (kind, key id)``) in a dict, so
the check on a by-id route is one dict lookup after the store's cheap change check
(``Store.objects_changed``: on SQLite a compare of the WAL-index header, as for key records).
When another process changed a record (an operator's ``keygate objects assign``, another
gateway's create or delete), only the rows changed since the last revision seen are read
(``Store.objects_since``), never the whole table.

What this gateway sees itself (an object created or deleted through it) is applied to the dict at
once, in the request that saw it, before any other request can run on the event loop: an owner's
immediate follow-up request to the same gateway always finds its object. The store write goes
behind, to a writer thread, started as soon as something is pending (not on a timer), so another
gateway sharing the store sees the record once that commit lands, normally within milliseconds;
a request that reaches another gateway before then gets 404 (docs/objects.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .batching import ListWriteBehind
from .store import ObjectChange, ObjectRow, Store
from .store.objects_sql import DELETED, changes_of

log = logging.getLogger("keygate.objects")


class Ownership(ListWriteBehind[ObjectChange]):
    """The in-process owner cache, and the write-behind buffer of what this gateway saw."""

    failure_log = log
    failure_message = "ownership records could not be written; will retry"

    def __init__(self, store: Store, interval: float = 0.5) -> None:
        super().__init__(interval, "keygate-objects")
        self._store = store
        self._owners: dict[str, tuple[str, str]] = {}  # id -> (kind, owner key id)
        self._meta: dict[str, dict[str, Any]] = {}  # keygate's notes on an object (batches)
        self._rev = 0
        self._kicked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: set[asyncio.Future[None]] = set()
        self._store.objects_changed()  # arm the change detector before reading
        self._apply(*self._store.objects_since(0))

    # -- the request path --------------------------------------------------------------------

    def owner(self, object_id: str) -> tuple[str, str] | None:
        """``(kind, key id)`` of the object's owner, or None when it belongs to no key."""
        if self._store.objects_changed():
            self.refresh()
        return self._owners.get(object_id)

    def meta(self, object_id: str) -> dict[str, Any]:
        return self._meta.get(object_id, {})

    def record(self, object_id: str, kind: str, key_id: str, meta: dict[str, Any] | None = None) -> None:
        """``key_id`` owns the object from now on (this process at once, the store soon)."""
        self._owners[object_id] = (kind, key_id)
        if meta is not None:
            self._meta[object_id] = meta
        self._queue(ObjectChange(object_id, kind, key_id, time.time(), meta))

    def note(self, object_id: str, meta: dict[str, Any]) -> None:
        """Replace keygate's notes on an owned object (a batch's hold, once settled)."""
        found = self._owners.get(object_id)
        if found is None:
            return
        self._meta[object_id] = meta
        self._queue(ObjectChange(object_id, found[0], found[1], time.time(), meta))

    def forget(self, object_id: str) -> None:
        """The object was deleted: it belongs to no key any more."""
        found = self._owners.pop(object_id, None)
        self._meta.pop(object_id, None)
        self._queue(ObjectChange(object_id, found[0] if found else DELETED, None, time.time()))

    def __len__(self) -> int:
        return len(self._owners)

    # -- keeping in step with the store ------------------------------------------------------

    def refresh(self) -> None:
        """Apply what other processes changed (rows after the last revision seen)."""
        rev = self._store.objects_rev()
        if rev != self._rev:
            self._apply(*self._store.objects_since(self._rev))

    def _apply(self, rev: int, rows: list[ObjectRow]) -> None:
        mine = {c.id for c in self._pending}  # not yet written: what this process saw is newer
        for row in rows:
            if row.id in mine:
                continue
            if row.key_id is None:
                self._owners.pop(row.id, None)
                self._meta.pop(row.id, None)
            else:
                self._owners[row.id] = (row.kind, row.key_id)
                if row.meta:
                    self._meta[row.id] = row.meta
        self._rev = max(self._rev, rev)

    def _queue(self, change: ObjectChange) -> None:
        self._pending.append(change)
        if not self._kicked and self._loop is not None:
            self._kicked = True
            self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kicked = False
        task = asyncio.ensure_future(self.flush())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await super().start()

    def _write(self, batch: list[ObjectChange]) -> None:
        self._store.write_objects(changes_of(batch))
