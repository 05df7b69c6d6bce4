"""In-process counters: exact without locks, because nothing awaits between check and update.

The data plane runs on one event loop; each ``async`` method here completes without suspending,
so no other request can interleave between reading a counter and writing it.

The per-request methods avoid the ``min``/``max`` builtins (on CPython 3.11 each call costs about
as much as a Python function call): a plain comparison gives the same result.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from math import ceil

from .base import Decision, Hold, Rate


class MemoryCounters:
    __slots__ = ("_budgets", "_gates", "_tat")

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}  # rate name -> theoretical arrival time (monotonic s)
        self._gates: dict[str, int] = {}
        self._budgets: dict[str, list[float]] = {}  # name -> [spent, held]

    # -- rates (GCRA) and concurrency gates ----------------------------------------------------

    async def take(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Decision:
        return self.take_now(rates, costs, now, gates)

    def take_now(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Decision:
        counts = self._gates
        for name, cap in gates:
            if counts.get(name, 0) >= cap:
                return Decision(False, gate=name)
        tats = self._tat
        # One pass that writes each rate as it passes (the rates have distinct names); a refusal
        # puts back what was written before it, so a refused request changes nothing. (Indexing
        # costs[i] rather than zip(): a zip object per request costs more than the loop body.)
        olds: list[float | None] = []
        remaining: list[int] = []
        resets: list[float] = []
        i = 0
        for rate in rates:
            old = tats.get(rate.name)
            after = (old if old is not None and old > now else now) + costs[i] * rate.interval
            ahead = after - now  # how far ahead of now the bucket runs with this request in
            i += 1  # noqa: SIM113
            if ahead > rate.burst:
                for r, o in zip(rates, olds):  # noqa: B905 (olds: the rates written so far)
                    if o is None:
                        del tats[r.name]
                    else:
                        tats[r.name] = o
                return self._refused(rates, rate, costs[i - 1], ahead, now)
            tats[rate.name] = after
            olds.append(old)
            resets.append(ahead)
            # Inline of _remaining(): this runs for every limit of every request.
            left = rate.limit - ceil(ahead / rate.interval - 1e-9)
            remaining.append(left if left > 0 else 0)
        if gates:
            for name, _ in gates:
                counts[name] = counts.get(name, 0) + 1
        return Decision(True, 0.0, None, remaining, resets)

    def _refused(self, rates: Sequence[Rate], rate: Rate, cost: float, ahead: float, now: float) -> Decision:
        wait = ahead - rate.period
        if cost > rate.limit:
            wait = rate.period  # can never fit: tell the client to back off a full period
        olds = [max(self._tat.get(r.name, now), now) for r in rates]
        return Decision(
            False,
            wait,
            rate,
            [_remaining(t, now, r) for t, r in zip(olds, rates, strict=True)],
            [t - now for t in olds],
        )

    def adjust(self, rate: Rate, delta: float, now: float) -> None:
        tats = self._tat
        tat = tats.get(rate.name, now)
        if tat < now:
            tat = now
        tat += delta * rate.interval
        if tat <= now:
            tats.pop(rate.name, None)
        else:
            tats[rate.name] = tat

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
        budgets = self._budgets
        out = []
        for name in names:
            entry = budgets.get(name)
            out.append((entry[0], entry[1]) if entry is not None else (0.0, 0.0))
        return out

    def settle(self, name: str, held: float, spent: float) -> tuple[float, float]:
        entry = self._budgets.get(name)
        if entry is None:
            entry = self._budgets[name] = [0.0, 0.0]
        before = entry[0]
        entry[0] += spent
        left = entry[1] - held
        entry[1] = left if left > 0.0 else 0.0
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
    used = max(0.0, tat - now) / rate.interval
    return max(0, rate.limit - ceil(used - 1e-9))


def monotonic() -> float:
    return time.monotonic()
