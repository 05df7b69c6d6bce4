"""In-process cache of client key records, keyed by HMAC hash.

The hot path never queries the database for a key: it asks :meth:`KeyCache.lookup`, which first
asks the store whether key records changed since the last look (a ~3 µs shared-memory check in
SQLite) and reloads them only then. A revoke from the CLI or admin API therefore takes effect on
the very next request.

With a networked store the database may be unreachable for a while: the cache then keeps serving
the snapshot it has (a failed reload is logged and retried at most once a second), so requests
that need nothing else from the database keep working.
"""

from __future__ import annotations

import hmac
import logging
import time

from .store import Store
from .types import KeyRecord, Team

log = logging.getLogger("keygate.keys")
RETRY = 1.0  # seconds between reload attempts while the store cannot be read


class KeyCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_hash: dict[str, KeyRecord] = {}
        self._teams: dict[str, Team] = {}
        # Secrets replaced by `keygate keys rotate`, still accepted until their grace expiry.
        self._grace: dict[str, tuple[str, float]] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._retry_at = 0.0  # a reload failed: try again after this (monotonic), else 0
        self.reloads = -1  # reloads after the first load (for the metrics)
        # Quarantined key ids (behavioural analytics): read by the quarantine guard, refreshed with
        # the keys (a quarantine or release bumps the same revision).
        self.quarantined: dict[str, tuple[float, str, str]] = {}
        self.refresh()

    def refresh(self) -> None:
        self.reloads += 1
        self._store.keys_changed()  # arm the change detector before reading
        self._by_hash = {r.key_hash: r for r in self._store.list_keys()}
        self._by_id = {r.id: r for r in self._by_hash.values()}
        self._grace = {h: (kid, exp) for h, kid, exp in self._store.list_grace_secrets(time.time())}
        self._teams = {t.id: t for t in self._store.list_teams()}
        self.quarantined = self._store.list_quarantines()

    def _changed(self) -> bool:
        """Whether to reload now: the store says so, or a failed reload is due again."""
        if self._store.keys_changed():
            return True
        return bool(self._retry_at) and time.monotonic() >= self._retry_at

    def _reload(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # the store is unreachable: keep serving this snapshot
            if not self._retry_at:
                log.warning("key reload failed; serving the cached keys", extra={"error": type(exc).__name__})
            self._retry_at = time.monotonic() + RETRY
        else:
            self._retry_at = 0.0

    def team(self, team_id: str | None) -> Team | None:
        """The team record of a key just looked up (same snapshot as the key)."""
        return self._teams.get(team_id) if team_id is not None else None

    def find_team(self, id_or_name: str) -> Team | None:
        """A team by id or name, from the current snapshot (refreshed if the store changed)."""
        if self._changed():
            self._reload()
        team = self._teams.get(id_or_name)
        if team is not None:
            return team
        return next((t for t in self._teams.values() if t.name == id_or_name), None)

    def lookup(self, key_hash: str) -> KeyRecord | None:
        # (_changed() inlined: this runs on every request)
        if self._store.keys_changed() or (self._retry_at and time.monotonic() >= self._retry_at):
            self._reload()
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

    def check(self) -> None:
        """Refresh if the store changed (for callers that look nothing up: token principals)."""
        if self._changed():
            self._reload()

    def by_id(self, key_id: str) -> KeyRecord | None:
        """A key record by id, from the current snapshot (the caller's own lookup refreshed it)."""
        return self._by_id.get(key_id)

    def records(self) -> list[KeyRecord]:
        """Every key record (current snapshot, refreshed if the store changed)."""
        if self._changed():
            self._reload()
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_hash)
