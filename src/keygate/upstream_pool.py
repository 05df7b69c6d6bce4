"""One model of "an upstream with several keys", merged from config and the store.

Config upstreams contribute their ``${ENV}`` and ``file:/path`` keys; the store contributes
upstreams defined with ``keygate upstreams add`` and every stored (sealed) key. The data plane
asks for a :class:`Lease` per attempt:

- keys are spread round robin (or by least in flight); ``retiring`` keys (after a rotation) are
  used only when no active key is available, and never after their grace period;
- a key answered with 401, or with a 403 saying the key itself is invalid or its account gone
  (``forward.py`` reads the answer), leaves the rotation with an alert log line, an audit entry
  and an alert (``SecurityEvents.upstream_key_rejected``; ``keygate upstreams enable`` puts it
  back); any other 403 refuses that request only and leaves the key as
  it was; a 429 cools it down for its Retry-After; 5xx and connection errors retry on another
  key, at most ``upstream_retries`` times, and never once a stream has started (the caller
  decides that);
- when every key of an upstream is out, its ``fallback`` upstream (and its fallback...) is used.

A background task reloads the pool when the store changes (``meta.upstreams_rev``) or a
``file:`` secret changes on disk, and on SIGHUP; decrypted secrets are cached by key id, so a
running gateway is unaffected by a master-key rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import Settings, Upstream
from .errors import ConfigError, KeygateError, RateLimited, StoreUnavailable, UpstreamUnavailable
from .events import SecurityEvents
from .schema import read_secret_file
from .store import Store
from .types import Secret
from .vault import Keyring, VaultError

log = logging.getLogger("keygate.upstream")
alert = logging.getLogger("keygate.alert")

MAX_COOLDOWN = 300.0
NO_KEYS = UpstreamUnavailable(
    "No upstream credentials are available right now. The operator has been notified.",
    code="upstream_unavailable",
)


class PoolKey:
    __slots__ = (
        "cool_until",
        "disabled",
        "disabled_at",
        "id",
        "in_flight",
        "retire_at",
        "secret",
        "source",
        "state",
        "view",
    )

    def __init__(self, key_id: str, view: Upstream, source: str, state: str, retire_at: float | None) -> None:
        assert view.api_key is not None
        self.id = key_id
        self.view = view  # the upstream, with this key as its api_key
        self.secret: Secret = view.api_key
        self.source = source  # config | store
        self.state = state  # active | retiring
        self.retire_at = retire_at
        self.in_flight = 0
        self.disabled = False
        self.disabled_at = 0.0  # wall clock, compared with an operator's `upstreams enable`
        self.cool_until = 0.0

    def usable(self, now: float, last_resort: bool = False) -> bool:
        if self.retire_at is not None and self.retire_at <= time.time():
            return False
        return last_resort or (not self.disabled and self.cool_until <= now)


class _Entry:
    __slots__ = ("keys", "rr", "upstream")

    def __init__(self, upstream: Upstream, keys: list[PoolKey]) -> None:
        self.upstream = upstream
        self.keys = keys
        self.rr = 0


class Lease:
    """One attempt on one key; report the outcome with exactly one of the methods, then release."""

    __slots__ = ("_pool", "key")

    def __init__(self, pool: UpstreamPool, key: PoolKey) -> None:
        self._pool = pool
        self.key = key
        key.in_flight += 1

    @property
    def upstream(self) -> Upstream:
        return self.key.view

    def release(self) -> None:
        self.key.in_flight -= 1

    def ok(self) -> None:
        if self.key.disabled:
            self.key.disabled = False
            log.warning("upstream key accepted again; back in rotation", extra={"upstream_key": self.key.id})
        if self.key.source == "store":
            self._pool.used[self.key.id] = time.time()

    def rejected(self, status: int) -> None:
        self.key.disabled = True
        self.key.disabled_at = time.time()
        alert.error(
            "upstream rejected one of its keys; it leaves the rotation (see: keygate upstreams enable)",
            extra={
                "alert": "upstream_key_rejected",
                "severity": "high",
                "upstream": self.key.view.name,
                "upstream_key": self.key.id,
                "upstream_status": status,
            },
        )
        events = self._pool.events
        if events is not None:  # the audit entry and the alert, written and sent off this path
            events.upstream_key_rejected(self.key.view.name, self.key.id, status)

    def forbidden(self, code: str) -> None:
        """The upstream refused this request (a model the project may not use, a region...), not
        the key: the key stays as it was, and the operator log says why."""
        log.warning(
            "upstream refused a request; the key stays in rotation",
            extra={"upstream": self.key.view.name, "upstream_key": self.key.id, "upstream_code": code},
        )

    def cooldown(self, retry_after: str | None) -> None:
        try:
            seconds = float(retry_after) if retry_after else 1.0
        except ValueError:
            seconds = 1.0
        self.key.cool_until = time.monotonic() + min(max(seconds, 0.1), MAX_COOLDOWN)
        log.warning(
            "upstream key rate limited; cooling down",
            extra={"upstream": self.key.view.name, "upstream_key": self.key.id, "seconds": seconds},
        )


class UpstreamPool:
    def __init__(
        self, settings: Settings, store: Store, keyring: Keyring | None, events: SecurityEvents | None = None
    ) -> None:
        self.settings = settings
        self.events = events
        self.max_attempts = settings.upstream_retries + 1
        self.used: dict[str, float] = {}
        self._store = store
        self._keyring = keyring
        self._entries: dict[str, _Entry] = {}
        self._opened: dict[str, Secret] = {}
        self._files: dict[str, tuple[float, int]] = {}
        self._rev: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.reload(strict=True)

    # -- loading -------------------------------------------------------------------------------

    def reload(self, *, strict: bool = False) -> None:
        """Rebuild the pool from settings, files and the store, keeping each key's runtime state."""
        self._rev = self._store.upstreams_rev()
        now = time.time()
        old = {k.id: k for e in self._entries.values() for k in e.keys}
        entries: dict[str, _Entry] = {}
        for up in self.settings.upstreams.values():
            entries[up.name] = _Entry(up, self._config_keys(up))
        for d in self._store.list_upstream_defs():
            known = entries.get(d.name)
            # A stored definition adds an upstream, or replaces the built-in default (never one of
            # the config file's, which `upstreams add` refuses to redefine).
            if known is None or known.upstream.source == "builtin":
                up = Upstream(
                    d.name,
                    d.base_url,
                    "",
                    None,
                    d.allow_insecure,
                    fallback=d.fallback,
                    ca_bundle=Path(d.ca_bundle) if d.ca_bundle else None,
                    source="store",
                )
                entries[d.name] = _Entry(up, [])
        for row in self._store.list_upstream_keys():
            entry = entries.get(row.upstream)
            status = row.effective_status(now)
            if entry is None or status == "retired" or row.sealed is None:
                continue
            secret = self._open(row.upstream, row.id, row.sealed, strict)
            if secret is not None:
                view = replace(entry.upstream, api_key=secret)
                entry.keys.append(PoolKey(row.id, view, "store", status, row.retire_at))
        enables = self._store.upstream_key_enables()
        for entry in entries.values():
            for k in entry.keys:
                prev = old.get(k.id)
                if prev is not None and prev.secret == k.secret:
                    k.disabled, k.cool_until, k.in_flight = prev.disabled, prev.cool_until, prev.in_flight
                    k.disabled_at = prev.disabled_at
                    if k.disabled and enables.get(k.id, 0.0) > k.disabled_at:
                        k.disabled = False
                        log.warning(
                            "upstream key enabled by an operator; back in rotation",
                            extra={"upstream": entry.upstream.name, "upstream_key": k.id},
                        )
        self._entries = entries

    def _open(self, upstream: str, key_id: str, sealed: Any, strict: bool) -> Secret | None:
        if key_id in self._opened:
            return self._opened[key_id]
        if self._keyring is None:
            raise ConfigError(
                "master key: the database holds encrypted upstream keys but no master key is configured "
                "(set KEYGATE_MASTER_KEY or master_key_file)"
            )
        try:
            secret = self._keyring.open(upstream, key_id, sealed)
        except VaultError as exc:
            if strict:
                raise ConfigError(f"master key: {exc.message}") from None
            log.error(
                "cannot open a stored upstream key", extra={"upstream_key": key_id, "error": exc.message}
            )
            return None
        self._opened[key_id] = secret
        return secret

    def _config_keys(self, up: Upstream) -> list[PoolKey]:
        refs = up.api_key_refs or ((up.api_key_ref,) if up.api_key is not None else ())
        values = up.api_keys or (up.api_key,)
        out: list[PoolKey] = []
        for i, ref in enumerate(refs):
            value: Secret | None = values[i] if i < len(values) else None
            if ref.startswith("file:"):
                self._files[ref] = _file_state(ref)
                try:
                    value = read_secret_file(ref, f"upstreams.{up.name}.api_keys")
                except ConfigError as exc:
                    log.error(
                        "cannot read an upstream key file", extra={"upstream": up.name, "error": exc.message}
                    )
                    value = None
            if value:
                out.append(PoolKey(f"{up.name}#{i}", replace(up, api_key=value), "config", "active", None))
        return out

    def key_count(self, name: str) -> int:
        entry = self._entries.get(name)
        return len(entry.keys) if entry else 0

    def names(self) -> list[str]:
        return sorted(self._entries)

    def key_states(self) -> list[tuple[str, str, str]]:
        """``(upstream, key id, state)`` for every key, the state one of ``up``, ``cooling_down``
        (after a 429), ``rejected`` (out of the rotation after a 401 or key-refusing 403) and
        ``retired`` (past its rotation's retirement), for the metrics."""
        now, wall, out = time.monotonic(), time.time(), []
        for name, entry in sorted(self._entries.items()):
            for k in entry.keys:
                if k.retire_at is not None and k.retire_at <= wall:
                    state = "retired"
                elif k.disabled:
                    state = "rejected"
                elif k.cool_until > now:
                    state = "cooling_down"
                else:
                    state = "up"
                out.append((name, k.id, state))
        return out

    def upstream_for(self, name: str | None) -> Upstream | None:
        entry = self._entries.get(name or self.settings.default_upstream)
        return entry.upstream if entry else None

    # -- choosing keys -------------------------------------------------------------------------

    def _pick(
        self, entry: _Entry, tried: set[str], now: float, peek: bool, last_resort: bool
    ) -> PoolKey | None:
        usable = [k for k in entry.keys if k.id not in tried and k.usable(now, last_resort)]
        pool = [k for k in usable if k.state == "active"] or usable
        if not pool:
            return None
        if peek:
            return pool[0]
        entry.rr += 1
        if entry.upstream.strategy == "least_in_flight":
            low = min(k.in_flight for k in pool)
            pool = [k for k in pool if k.in_flight == low]
        return pool[entry.rr % len(pool)]

    def _walk(self, name: str, tried: set[str], peek: bool) -> PoolKey | None:
        """The upstream's healthy keys, then its fallbacks'. Only when none is healthy anywhere,
        rejected or cooling keys are tried as a last resort (so a lone key rejected or rate limited
        once is not locked out; the upstream's own answer is relayed, and success re-enables it)."""
        now = time.monotonic()
        for last_resort in (False, True):
            seen: set[str] = set()
            current: str | None = name
            while current is not None and current not in seen:
                seen.add(current)
                entry = self._entries.get(current)
                if entry is None:
                    break
                key = self._pick(entry, tried, now, peek, last_resort)
                if key is not None:
                    return key
                current = entry.upstream.fallback
        return None

    def acquire(self, name: str, tried: set[str]) -> Lease | None:
        """A lease on the next key of ``name`` (or of its fallbacks) not in ``tried``."""
        entry = self._entries.get(name)
        if entry is not None and len(entry.keys) == 1 and not tried:
            # The usual case, one key and a first attempt: no lists to build when it is healthy.
            only = entry.keys[0]
            if only.state == "active" and only.usable(time.monotonic()):
                tried.add(only.id)
                return Lease(self, only)
        key = self._walk(name, tried, peek=False)
        if key is None:
            return None
        tried.add(key.id)
        return Lease(self, key)

    def can_retry(self, name: str, tried: set[str]) -> bool:
        return len(tried) < self.max_attempts and self._walk(name, tried, peek=True) is not None

    def unavailable(self, name: str) -> KeygateError:
        """The error for "no key left": a 429 if keys are only cooling down, else a 503."""
        entry = self._entries.get(name)
        now = time.monotonic()
        cooling = [
            k.cool_until - now for k in (entry.keys if entry else []) if not k.disabled and k.cool_until > now
        ]
        if cooling:
            return RateLimited("The upstream API is rate limiting this gateway.", retry_after=min(cooling))
        log.error("no upstream key available", extra={"upstream": name})
        return NO_KEYS

    # -- background refresh --------------------------------------------------------------------

    def changed(self) -> bool:
        if self._store.upstreams_rev() != self._rev:
            return True
        return any(_file_state(ref) != state for ref, state in self._files.items())

    def refresh(self) -> None:
        try:
            if self.changed():
                self.reload()
                log.info("upstream keys reloaded", extra={"upstreams": self.names()})
            if self.used:
                used, self.used = self.used, {}
                try:
                    self._store.touch_upstream_keys(used)
                except StoreUnavailable:  # kept for the next round (newest time per key wins)
                    for key_id, ts in used.items():
                        self.used[key_id] = max(ts, self.used.get(key_id, 0.0))
                    raise
        except StoreUnavailable:
            log.debug("upstream key refresh skipped: the database is unreachable")
        except Exception:
            log.exception("upstream key refresh failed")

    def refresh_now(self) -> None:
        """SIGHUP: re-read every file: secret and the store now."""
        try:
            self.reload()
            log.info("upstream keys reloaded on SIGHUP", extra={"upstreams": self.names()})
        except Exception:
            log.exception("upstream key reload failed")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.key_refresh_interval)
            self.refresh()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            self._store.touch_upstream_keys(self.used)


def _file_state(ref: str) -> tuple[float, int]:
    try:
        st = os.stat(ref[len("file:") :])
    except OSError:
        return (0.0, -1)
    return (st.st_mtime, st.st_size)
