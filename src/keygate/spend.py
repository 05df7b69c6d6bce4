"""Budget periods, counter names, spend persistence and the soft-threshold webhook.

Spend lives in the counters (in process by default) and is written to the store in batches:
every ``usage_flush_interval`` the budget counters changed since the last write are saved as
absolute ``(spent, held)`` values, and once more at shutdown. At start-up each counter is seeded
with ``spent + held``: money held by requests that were in flight when the process died is counted
as spent at its worst case, so a crash can only make a budget stricter, never looser.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import datetime
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import httpx
import orjson

from . import outbound
from .batching import WriteBehind
from .counters import Counters, CountersUnavailable
from .limitconf import BUDGET_KINDS
from .types import KeyRecord, Team

log = logging.getLogger("keygate.budget")


class SpendStore(Protocol):
    def load_spend(self) -> dict[str, tuple[float, float]]: ...
    def save_spend(self, rows: Sequence[tuple[str, float, float]], ts: float) -> None: ...


class Budget:
    """One budget that applies to a request."""

    __slots__ = ("amount", "kind", "label", "period", "scope")

    def __init__(self, scope: str, label: str, kind: str, amount: float, period: str) -> None:
        self.scope = scope  # key:<id> | team:<id>
        self.label = label  # the key's or team's name, for the soft-threshold notice
        self.kind = kind  # usd | tokens
        self.amount = float(amount)
        self.period = period


def budgets_of(key: KeyRecord, team: Team | None, defaults: Mapping[str, Any]) -> list[Budget]:
    out: list[Budget] = []
    scopes: list[tuple[str, str, Mapping[str, Any]]] = [
        (f"key:{key.id}", key.name, {**{k: defaults[k] for k in BUDGET_KINDS if k in defaults}, **key.policy})
    ]
    if team is not None:
        scopes.append((f"team:{team.id}", team.name, team.policy))
    for scope, label, policy in scopes:
        for kind in BUDGET_KINDS:
            spec = policy.get(kind)
            if isinstance(spec, dict) and isinstance(spec.get("amount"), int | float):
                period = str(spec.get("period", "lifetime"))
                out.append(Budget(scope, label, kind[7:], spec["amount"], period))
    return out


def period_key(period: str, ts: float) -> str:
    """The name of the budget period ``ts`` falls in (UTC calendar periods)."""
    if period == "lifetime":
        return "lifetime"
    return _period_key(period, int(ts))


@functools.lru_cache(maxsize=64)
def _period_key(period: str, second: int) -> str:
    # Cached per second: every request of that second asks, and strftime is not free.
    t = time.gmtime(second)
    if period == "day":
        return time.strftime("%Y-%m-%d", t)
    if period == "month":
        return time.strftime("%Y-%m", t)
    year, week, _ = datetime.date(t.tm_year, t.tm_mon, t.tm_mday).isocalendar()
    return f"{year}-W{week:02d}"


def period_bounds(period: str, ts: float) -> tuple[float, float]:
    """The UTC period ``ts`` falls in, as ``[start, end)`` in seconds since the epoch.

    Every time in it has the same :func:`period_key`, so a counter name computed once holds until
    ``end``; ``lifetime`` never ends.
    """
    if period == "lifetime":
        return -math.inf, math.inf
    t = time.gmtime(int(ts))
    day_start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    if period == "day":
        return float(day_start), float(day_start + 86400)
    if period == "month":
        days = calendar.monthrange(t.tm_year, t.tm_mon)[1]
        return float(day_start - (t.tm_mday - 1) * 86400), float(day_start + (days - t.tm_mday + 1) * 86400)
    # ISO weeks: Monday 00:00 to the next Monday 00:00 (tm_wday is 0 on Mondays).
    return float(day_start - t.tm_wday * 86400), float(day_start + (7 - t.tm_wday) * 86400)


def period_end(period: str, ts: float) -> float:
    """Seconds from ``ts`` until the period ends (a day for lifetime, as a polite retry hint)."""
    t = time.gmtime(ts)
    day_start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
    if period == "month":
        days = calendar.monthrange(t.tm_year, t.tm_mon)[1]
        end = day_start + (days - t.tm_mday + 1) * 86400
    elif period == "week":
        end = day_start + (7 - t.tm_wday) * 86400
    else:
        end = day_start + 86400
    return max(1.0, end - ts)


def counter_name(scope: str, kind: str, period: str, ts: float) -> str:
    """``key:<id>|usd|2025-08`` style names; the store keeps them as its spend rows."""
    return f"{scope}|{kind}|{period_key(period, ts)}"


class SpendBook(WriteBehind):
    """Which budget counters changed, and the batch writer that persists them."""

    def __init__(self, counters: Counters, store: SpendStore | None, interval: float) -> None:
        super().__init__(interval, "keygate-spend")
        self._counters = counters
        self._store = store
        self._dirty: set[str] = set()
        # touch(name): the counter changed and is to be written. Called twice per budget per
        # request, so it is the set's own add; flush() empties this same set, never replaces it.
        self.touch: Callable[[str], None] = self._dirty.add

    @property
    def pending(self) -> bool:
        return bool(self._dirty) and self._store is not None

    def load(self) -> None:
        if self._store is None or self._counters.shared:
            # Shared counters (Redis) live on while instances come and go: holds persisted there
            # belong to other instances' requests in flight, not to a run that died. Redis rebuilds
            # its counters from the store itself when it is found empty (docs/redis.md).
            return
        rows = self._store.load_spend()
        self._counters.load({n: spent + held for n, (spent, held) in rows.items()})
        orphans = [(n, spent + held, 0.0) for n, (spent, held) in rows.items() if held > 0]
        if orphans:
            # Held by requests in flight when the last run died: now counted as spent.
            self._store.save_spend(orphans, time.time())
            log.warning("unfinished holds counted as spent", extra={"counters": len(orphans)})

    async def start(self) -> None:
        self.load()
        await super().start()

    async def flush(self) -> None:
        if not self._dirty or self._store is None:
            return
        names = sorted(self._dirty)
        self._dirty.clear()
        try:
            snap = await self._counters.snapshot(names)
            if snap is None:  # the shared counters lost their state: never persist what is left
                self._dirty.update(names)
                return
            rows = [(n, spent, held) for n, (spent, held) in snap.items()]
            await self._in_writer(self._store.save_spend, rows, time.time())
        except Exception as exc:
            if isinstance(exc, CountersUnavailable):
                log.warning("spend flush waits for the counters", extra={"error": str(exc)})
            else:
                log.exception("spend flush failed; will retry")
            self._dirty.update(names)


class Notifier:
    """The soft-threshold notice: logged, and POSTed to ``webhook_url`` in the background.

    Best effort: one attempt per notice with a 5 s timeout, failures only logged; a request never
    waits for it. The POST goes through ``outbound.async_client`` (no redirects, no proxy from the
    environment, TLS verified).
    """

    def __init__(self, url: str | None) -> None:
        self._url = url
        self._client: httpx.AsyncClient | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._url is not None:
            self._client = outbound.async_client(connect_timeout=5.0, timeout=5.0)

    async def stop(self) -> None:
        for task in list(self._sending):
            task.cancel()
        for task in list(self._sending):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def send(self, payload: dict[str, Any]) -> None:
        log.warning("budget soft threshold reached", extra={"budget_notice": payload})
        if self._client is None or self._url is None:
            return
        task = asyncio.get_running_loop().create_task(self._post(self._client, self._url, payload))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    @staticmethod
    async def _post(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> None:
        try:
            response = await client.post(
                url, content=orjson.dumps(payload), headers={"content-type": "application/json"}
            )
            if response.status_code >= 300:
                log.warning("budget webhook failed", extra={"status": response.status_code})
        except Exception as exc:
            log.warning("budget webhook failed", extra={"error": type(exc).__name__})
