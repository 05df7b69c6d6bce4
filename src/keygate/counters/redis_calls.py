"""The :class:`~keygate.counters.base.Counters` protocol call by call on Redis (a mixin of
:class:`~keygate.counters.redis.RedisCounters`): each deciding call one admit script, each settling
call one queued release. The gateway itself uses ``admit`` and ``release`` (one each per request);
these serve the protocol's other users and the contract tests shared with the in-process counters.

A slot or hold taken here has a lease like any other; the plain calls that give them back name
only the gate or budget, so this remembers which of its own leases and holds each one has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import Admitted, Ask, BudgetShort, Done, Rate, Refused, Settled, Taken


class CallByCall:
    _prefix: str
    _marker: str
    _mine: dict[str, list[str]]  # gate or "b:" + budget -> leases / holds taken by take/reserve
    _active: dict[str, Any]  # lease -> what renews it

    async def admit(self, ask: Ask, now: float) -> Admitted | Refused | BudgetShort:
        raise NotImplementedError

    def release(self, done: Done, settled: Settled | None = None) -> None:
        raise NotImplementedError

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        raise NotImplementedError

    async def _rebuild(self) -> None:
        raise NotImplementedError

    async def take(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Taken | Refused:
        got = await self.admit(Ask(rates, costs, gates), now)
        if isinstance(got, Admitted):
            for name, _ in gates:
                self._mine.setdefault(name, []).append(got.lease)
            return got.afters
        assert isinstance(got, Refused)
        return got

    def finish(self, gates: Sequence[str], rates: Sequence[Rate], delta: float, now: float) -> None:
        for name in gates:
            mine = self._mine.get(name)
            if mine:
                lease = mine.pop()
                self.release(Done(lease, (name,)))
        if delta:
            self.release(Done(None, (), rates, delta))

    def adjust(self, rate: Rate, delta: float, now: float) -> None:
        self.finish((), (rate,), delta, now)

    def leave(self, names: Sequence[str]) -> None:
        self.finish(names, (), 0.0, 0.0)

    async def reserve(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> int | None:
        zeros = [0.0] * len(names)
        got = await self.admit(Ask(budgets=names, budget_limits=limits, base=amounts, unit=zeros), 0.0)
        if isinstance(got, BudgetShort):
            return got.index
        assert isinstance(got, Admitted)
        for name, hold in zip(names, got.holds, strict=True):
            self._mine.setdefault("b:" + name, []).append(hold)
        return None

    async def available(self, names: Sequence[str]) -> list[tuple[float, float]]:
        got = await self._state(names, loaded=False)
        assert got is not None
        return got

    def settle(self, name: str, held: float, spent: float) -> None:
        mine = self._mine.get("b:" + name)
        hold = ""
        if mine and held:
            hold = next((h for h in mine if abs(float(h.rsplit("|", 1)[1]) - held) < 1e-9), mine[-1])
            mine.remove(hold)
            self._active.pop(hold.split("|", 1)[0], None)
        self.release(Done(None, budgets=(name,), holds=(hold,), spent=(spent,)))

    def load(self, spent: Mapping[str, float]) -> None:
        """Nothing to do: Redis rebuilds its budget counters from the store when found empty."""

    async def snapshot(self, names: Sequence[str]) -> dict[str, tuple[float, float]] | None:
        got = await self._state(names, loaded=True)
        if got is None:
            await self._rebuild()
            got = await self._state(names, loaded=True)
        return dict(zip(names, got, strict=True)) if got is not None else None

    async def _state(self, names: Sequence[str], *, loaded: bool) -> list[tuple[float, float]] | None:
        keys = [self._marker]
        for name in names:
            keys += (self._prefix + "b:" + name, self._prefix + "bh:" + name)
        got = await self._call("state", keys, ["1" if loaded else "0"])
        if got[0] == "noload":
            return None
        return [(float(got[i]), float(got[i + 1])) for i in range(1, len(got), 2)]
