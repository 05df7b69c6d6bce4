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

from .base import Rate, Refused, Taken
from .lockouts import LocalLockouts


class MemoryCounters:
    __slots__ = ("_budgets", "_gates", "_tat", "fail", "locked", "lockouts")

    shared = False  # one process's counters: persisted holds are its own, from a run that died

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}  # rate name -> theoretical arrival time (monotonic s)
        self._gates: dict[str, int] = {}
        self._budgets: dict[str, list[float]] = {}  # name -> [spent, held]
        self.lockouts = LocalLockouts()
        # The lockout methods of the Counters protocol are the local lockouts' own.
        self.fail = self.lockouts.fail
        self.locked = self.lockouts.locked

    # -- rates (GCRA) and concurrency gates ----------------------------------------------------

    async def take(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Taken | Refused:
        return self.take_now(rates, costs, now, gates)

    def take_now(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Taken | Refused:
        counts = self._gates
        if gates:
            for name, cap in gates:
                if counts.get(name, 0) >= cap:
                    return Refused(gate=name)
        tats = self._tat
        # Check every rate first, then write them all: a refusal changes nothing.
        afters: list[float] = []
        for rate, cost in zip(rates, costs):  # noqa: B905 (one cost per rate)
            tat = tats.get(rate.name, now)
            if tat < now:
                tat = now
            after = tat + cost * rate.interval
            if after - now > rate.burst:  # the bucket would run more than a full period ahead
                return self._refused(rates, rate, cost, after - now, now)
            afters.append(after)
        for rate, after in zip(rates, afters):  # noqa: B905
            tats[rate.name] = after
        if gates:
            for name, _ in gates:
                counts[name] = counts.get(name, 0) + 1
        return afters

    def _refused(self, rates: Sequence[Rate], rate: Rate, cost: float, ahead: float, now: float) -> Refused:
        wait = ahead - rate.period
        if cost > rate.limit:
            wait = rate.period  # can never fit: tell the client to back off a full period
        olds = [max(self._tat.get(r.name, now), now) for r in rates]
        return Refused(
            wait,
            rate,
            [_remaining(t, now, r) for t, r in zip(olds, rates, strict=True)],
            [t - now for t in olds],
        )

    def finish(self, gates: Sequence[str], rates: Sequence[Rate], delta: float, now: float) -> None:
        counts = self._gates
        for name in gates:
            n = counts.get(name, 0) - 1
            if n > 0:
                counts[name] = n
            else:
                counts.pop(name, None)
        if delta:
            tats = self._tat
            for rate in rates:
                tat = tats.get(rate.name, now)
                if tat < now:
                    tat = now
                tat += delta * rate.interval
                if tat <= now:
                    tats.pop(rate.name, None)  # a full bucket: nothing to remember
                else:
                    tats[rate.name] = tat

    def adjust(self, rate: Rate, delta: float, now: float) -> None:
        self.finish((), (rate,), delta, now)

    def leave(self, names: Sequence[str]) -> None:
        self.finish(names, (), 0.0, 0.0)

    def in_flight(self, name: str) -> int:
        return self._gates.get(name, 0)

    # -- budgets ------------------------------------------------------------------------------

    async def reserve(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> int | None:
        return self.reserve_now(names, limits, amounts)

    def reserve_now(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> int | None:
        budgets = self._budgets
        entries = []
        i = 0
        for name in names:
            entry = budgets.get(name)
            if entry is None:
                entry = budgets[name] = [0.0, 0.0]
            if entry[0] + entry[1] + amounts[i] > limits[i] + 1e-12:
                return i
            entries.append(entry)
            i += 1  # noqa: SIM113
        i = 0
        for entry in entries:
            entry[1] += amounts[i]
            i += 1  # noqa: SIM113
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

    async def snapshot(self, names: Sequence[str]) -> dict[str, tuple[float, float]]:
        return self.snapshot_now(names)

    def snapshot_now(self, names: Sequence[str]) -> dict[str, tuple[float, float]]:
        return {n: self._pair(n) for n in names}

    def _pair(self, name: str) -> tuple[float, float]:
        entry = self._budgets.get(name)
        return (entry[0], entry[1]) if entry is not None else (0.0, 0.0)


def _remaining(tat: float, now: float, rate: Rate) -> int:
    used = max(0.0, tat - now) / rate.interval
    return max(0, rate.limit - ceil(used - 1e-9))


def monotonic() -> float:
    return time.monotonic()
