"""In-process cache of client key records, keyed by HMAC hash.

The hot path never queries the database for a key: it asks :meth:`KeyCache.lookup`, which first
asks the store whether key records changed since the last look (a ~3 µs shared-memory check in
SQLite) and reloads them only then. A revoke from the CLI or admin API therefore takes effect on
the very next request.
"""

from __future__ import annotations

import hmac
import time

from .store import Store
from .types import KeyRecord, Team


class KeyCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_hash: dict[str, KeyRecord] = {}
        self._teams: dict[str, Team] = {}
        # Secrets replaced by `keygate keys rotate`, still accepted until their grace expiry.
        self._grace: dict[str, tuple[str, float]] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self.refresh()

    def refresh(self) -> None:
        self._store.keys_changed()  # arm the change detector before reading
        self._by_hash = {r.key_hash: r for r in self._store.list_keys()}
        self._by_id = {r.id: r for r in self._by_hash.values()}
        self._grace = {h: (kid, exp) for h, kid, exp in self._store.list_grace_secrets(time.time())}
        self._teams = {t.id: t for t in self._store.list_teams()}

    def team(self, team_id: str | None) -> Team | None:
        """The team record of a key just looked up (same snapshot as the key)."""
        return self._teams.get(team_id) if team_id is not None else None

    def find_team(self, id_or_name: str) -> Team | None:
        """A team by id or name, from the current snapshot (refreshed if the store changed)."""
        if self._store.keys_changed():
            self.refresh()
        team = self._teams.get(id_or_name)
        if team is not None:
            return team
        return next((t for t in self._teams.values() if t.name == id_or_name), None)

    def lookup(self, key_hash: str) -> KeyRecord | None:
        if self._store.keys_changed():
            self.refresh()
        record = self._by_hash.get(key_hash)
        if record is None:
            return self._lookup_grace(key_hash)
        if not hmac.compare_digest(record.key_hash, key_hash):
            return None
        return record

    def _lookup_grace(self, key_hash: str) -> KeyRecord | None:
        grace = self._grace.get(key_hash)
        if grace is None or grace[1] <= time.time():
            return None
        return self._by_id.get(grace[0])

    def by_id(self, key_id: str) -> KeyRecord | None:
        """A key record by id, from the current snapshot (the caller's own lookup refreshed it)."""
        return self._by_id.get(key_id)

    def records(self) -> list[KeyRecord]:
        """Every key record (current snapshot, refreshed if the store changed)."""
        if self._store.keys_changed():
            self.refresh()
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_hash)
