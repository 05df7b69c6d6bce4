"""In-process counters: exact without locks, because nothing awaits between check and update.

The data plane runs on one event loop; each ``async`` method here completes without suspending,
so no other request can interleave between reading a counter and writing it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from .base import Decision, Hold, Rate


class MemoryCounters:
    __slots__ = ("_budgets", "_gates", "_tat")

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}  # rate name -> theoretical arrival time (monotonic s)
        self._gates: dict[str, int] = {}
        self._budgets: dict[str, list[float]] = {}  # name -> [spent, held]

    # -- rates (GCRA) ------------------------------------------------------------------------

    async def take(self, rates: Sequence[Rate], costs: Sequence[float], now: float) -> Decision:
        return self.take_now(rates, costs, now)

    def take_now(self, rates: Sequence[Rate], costs: Sequence[float], now: float) -> Decision:
        tats = self._tat
        new: list[float] = []
        for rate, cost in zip(rates, costs, strict=True):
            tat = tats.get(rate.name, now)
            if tat < now:
                tat = now
            after = tat + cost * rate.period / rate.limit
            if after - now > rate.period + 1e-9:
                wait = after - now - rate.period
                if cost > rate.limit:
                    wait = rate.period  # can never fit: tell the client to back off a full period
                olds = [max(tats.get(r.name, now), now) for r in rates]
                return Decision(
                    False,
                    wait,
                    rate,
                    [_remaining(t, now, r) for t, r in zip(olds, rates, strict=True)],
                    [t - now for t in olds],
                )
            new.append(after)
        resets = []
        remaining = []
        for rate, after in zip(rates, new, strict=True):
            tats[rate.name] = after
            ahead = after - now
            resets.append(ahead)
            # Inline of _remaining(): this runs for every limit of every request.
            remaining.append(max(0, rate.limit - math.ceil(ahead * rate.limit / rate.period - 1e-9)))
        return Decision(True, 0.0, None, remaining, resets)

    def adjust(self, rate: Rate, delta: float, now: float) -> None:
        tat = max(self._tat.get(rate.name, now), now) + delta * rate.period / rate.limit
        if tat <= now:
            self._tat.pop(rate.name, None)
        else:
            self._tat[rate.name] = tat

    # -- concurrency gates --------------------------------------------------------------------

    async def enter(self, gates: Sequence[tuple[str, int]]) -> str | None:
        return self.enter_now(gates)

    def enter_now(self, gates: Sequence[tuple[str, int]]) -> str | None:
        counts = self._gates
        for name, cap in gates:
            if counts.get(name, 0) >= cap:
                return name
        for name, _ in gates:
            counts[name] = counts.get(name, 0) + 1
        return None

    def leave(self, names: Sequence[str]) -> None:
        counts = self._gates
        for name in names:
            n = counts.get(name, 0) - 1
            if n > 0:
                counts[name] = n
            else:
                counts.pop(name, None)

    def in_flight(self, name: str) -> int:
        return self._gates.get(name, 0)

    # -- budgets ------------------------------------------------------------------------------

    async def reserve(self, holds: Sequence[Hold]) -> Hold | None:
        return self.reserve_now(holds)

    def reserve_now(self, holds: Sequence[Hold]) -> Hold | None:
        budgets = self._budgets
        for h in holds:
            spent, held = budgets.get(h.name, (0.0, 0.0))
            if spent + held + h.amount > h.limit + 1e-12:
                return h
        for h in holds:
            entry = budgets.get(h.name)
            if entry is None:
                budgets[h.name] = [0.0, h.amount]
            else:
                entry[1] += h.amount
        return None

    async def available(self, names: Sequence[str]) -> list[tuple[float, float]]:
        return self.available_now(names)

    def available_now(self, names: Sequence[str]) -> list[tuple[float, float]]:
        return [self._pair(n) for n in names]

    def settle(self, name: str, held: float, spent: float) -> tuple[float, float]:
        entry = self._budgets.setdefault(name, [0.0, 0.0])
        before = entry[0]
        entry[0] += spent
        entry[1] = max(0.0, entry[1] - held)
        return before, entry[0]

    def load(self, spent: Mapping[str, float]) -> None:
        for name, value in spent.items():
            entry = self._budgets.setdefault(name, [0.0, 0.0])
            entry[0] = max(entry[0], value)

    def snapshot(self, names: Sequence[str]) -> dict[str, tuple[float, float]]:
        return {n: self._pair(n) for n in names}

    def _pair(self, name: str) -> tuple[float, float]:
        entry = self._budgets.get(name)
        return (entry[0], entry[1]) if entry is not None else (0.0, 0.0)


def _remaining(tat: float, now: float, rate: Rate) -> int:
    used = max(0.0, tat - now) * rate.limit / rate.period
    return max(0, rate.limit - math.ceil(used - 1e-9))


def monotonic() -> float:
    return time.monotonic()
