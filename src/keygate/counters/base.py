"""The Counters protocol: what limits and budgets need from shared state.

The in-process :class:`~keygate.counters.memory.MemoryCounters` is the default. A Redis
implementation (several gateway instances sharing limits exactly) implements the same protocol
with one Lua script per call, so every check-and-update stays atomic:

* the ``async`` methods decide (take, reserve): they may await a round trip, and each one checks
  *all* the limits it is given and updates them only if every one passes (``take`` covers a
  request's concurrency gates and rates together, so a request costs one call, one round trip);
* the plain methods settle (finish, settle): they run in the ``complete`` phase, which is
  synchronous, so a networked implementation queues them and sends them in the background.

Rates use GCRA (a token bucket kept as one "theoretical arrival time" per limit): a full bucket
holds ``limit`` units and refills continuously at ``limit / period``, so there is no window edge to
burst across: in any interval of length ``d`` at most ``limit + d * limit / period`` units pass.

An implementation that never needs to wait (the in-process one) also offers :class:`SyncCounters`:
the same decisions as plain ``*_now`` methods. The limit guards use those when present, so the
common case pays for no coroutine at all; a networked implementation simply leaves them out.

An implementation shared by several gateway instances (Redis) also offers :class:`SharedCounters`:
one :meth:`~SharedCounters.admit` decides a request's gates, rates (key, team and global) and
budgets together, in one round trip, and one :meth:`~SharedCounters.release` settles all of it.
What it admits is held under a *lease* that expires unless renewed, so an instance that dies
frees what it held within the lease time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Rate:
    """One rate limit: ``limit`` units per ``period`` seconds on the counter ``name``."""

    name: str
    limit: int
    period: float
    kind: str = "requests"  # requests | tokens
    # Derived once, for the per-request arithmetic: seconds one unit takes to drain, and how far
    # ahead of now the bucket may run (a full bucket, plus a little for float rounding).
    interval: float = field(init=False, repr=False, compare=False)
    burst: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", self.period / self.limit)
        object.__setattr__(self, "burst", self.period + 1e-9)


Taken = list[float]
"""What :meth:`Counters.take` returns when a request is let through: per rate, in the order the
rates were passed, its bucket's theoretical arrival time with this request in (in the time base of
``now``). ``after - now`` is the time until the bucket is full again, and
``limit - ceil((after - now) / interval)`` the units left."""


@dataclass(slots=True)
class Refused:
    """What :meth:`Counters.take` returns when a request is not let through, and when to retry.

    A full concurrency gate refuses before any rate is looked at: ``gate`` names it, ``denied`` is
    None and ``remaining`` and ``reset`` are empty. Otherwise ``denied`` is the rate that refused,
    and ``remaining`` and ``reset`` (seconds until the bucket is full) are per rate, as before the
    request (it changed nothing).
    """

    retry_after: float = 0.0
    denied: Rate | None = None
    remaining: list[int] = field(default_factory=list)
    reset: list[float] = field(default_factory=list)
    gate: str | None = None


class CountersUnavailable(Exception):
    """Networked counters could not decide (the server is unreachable or did not answer in time)."""


class Counters(Protocol):
    async def take(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Taken | Refused:
        """Enter every ``(name, max_in_flight)`` gate and consume ``costs[i]`` from each ``rates[i]``
        if every gate has room and every rate allows it, else change nothing."""
        ...

    def finish(self, gates: Sequence[str], rates: Sequence[Rate], delta: float, now: float) -> None:
        """A request taken with :meth:`take` is over: leave its ``gates`` and correct each of
        ``rates`` by ``delta`` units (real tokens minus the estimate; may be negative)."""
        ...

    def adjust(self, rate: Rate, delta: float, now: float) -> None:
        """Correct one rate after the fact (``finish`` with no gates)."""
        ...

    def leave(self, names: Sequence[str]) -> None:
        """Leave gates entered with :meth:`take` (``finish`` with no rates)."""
        ...

    async def reserve(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> int | None:
        """Hold ``amounts[i]`` on budget counter ``names[i]`` if each fits under ``limits[i]``
        (spent + held + amount <= limit), else hold nothing.

        Returns the index of the first amount that did not fit, or None when all were held.
        """
        ...

    async def available(self, names: Sequence[str]) -> list[tuple[float, float]]:
        """``(spent, held)`` of each budget counter."""
        ...

    def settle(self, name: str, held: float, spent: float) -> tuple[float, float] | None:
        """Release ``held`` and add ``spent``; returns the counter's spent before and after (None
        from counters that settle in the background)."""
        ...

    def load(self, spent: Mapping[str, float]) -> None:
        """Seed budget counters with spend persisted by an earlier run."""
        ...

    async def snapshot(self, names: Sequence[str]) -> dict[str, tuple[float, float]] | None:
        """``(spent, held)`` of the given budget counters, for persisting; None when the counters
        do not hold the whole truth (shared counters that lost their state and were not rebuilt)."""
        ...

    # Lockouts: failed authentications per client address.

    def fail(
        self,
        name: str,
        window: float,
        max_failures: int,
        duration: float,
        on_locked: Callable[[str], None] | None = None,
    ) -> bool:
        """Count one failed authentication of ``name``; once ``max_failures`` fall within
        ``window`` seconds it is locked out for ``duration`` seconds and ``on_locked(name)`` is
        called (by the instance that counted the last failure). True when this call locked it
        out (counters that decide in the background return False and call ``on_locked`` later)."""
        ...

    def locked(self, name: str) -> float:
        """Seconds left of ``name``'s lockout, 0.0 when it is not locked out (never waits)."""
        ...

    # Whether several gateway instances share these counters (persisted holds then belong to
    # requests of other instances still in flight, not to a crashed run of this one).
    shared: bool


@runtime_checkable
class SyncCounters(Protocol):
    """The deciding methods of :class:`Counters` as plain calls, for implementations that never wait."""

    def take_now(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Taken | Refused: ...

    def reserve_now(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> int | None: ...

    def available_now(self, names: Sequence[str]) -> list[tuple[float, float]]: ...


@dataclass(slots=True)
class Ask:
    """Everything one request asks of shared counters, decided in one call.

    Budgets: request ``i`` holds ``base[i] + unit[i] * k`` on ``budgets[i]`` (spent + held + hold
    <= ``budget_limits[i]``), where ``k`` is the largest output up to ``output`` that every budget
    affords (rounded down to a multiple of ``step`` when it is less); at least ``need`` must fit.
    """

    rates: Sequence[Rate] = ()
    costs: Sequence[float] = ()
    gates: Sequence[tuple[str, int]] = ()
    budgets: Sequence[str] = ()
    budget_limits: Sequence[float] = ()
    base: Sequence[float] = ()
    unit: Sequence[float] = ()
    output: int = 0
    need: int = 0
    step: int = 1


@dataclass(slots=True)
class Admitted:
    """An admitted request: its lease, each rate's bucket time (as :data:`Taken`, in the time base
    of the ``now`` passed in) and the output its budget holds cover."""

    lease: str
    afters: Taken
    output: int
    holds: list[str] = field(default_factory=list)  # the hold of each budget, for its release
    now: float = 0.0  # the ``now`` the afters are relative to


@dataclass(slots=True)
class BudgetShort:
    """A request refused because budget ``index`` (of :attr:`Ask.budgets`) cannot afford it."""

    index: int


@dataclass(slots=True)
class Done:
    """What a finished request gives back: its gates, a correction of its token rates, and per
    budget the hold released and the spend added."""

    lease: str | None
    gates: Sequence[str] = ()
    rates: Sequence[Rate] = ()
    delta: float = 0.0
    budgets: Sequence[str] = ()
    holds: Sequence[str] = ()
    spent: Sequence[float] = ()


Settled = Callable[[list[tuple[float, float]]], None]
"""Called with each budget's spent before and after a :class:`Done` was applied."""


@runtime_checkable
class SharedCounters(Protocol):
    """Counters several gateway instances share: one call to admit a request, one to settle it."""

    async def admit(self, ask: Ask, now: float) -> Admitted | Refused | BudgetShort:
        """Take every gate, rate and budget hold of ``ask``, or nothing (raises
        :class:`CountersUnavailable` when it cannot decide)."""
        ...

    def release(self, done: Done, settled: Settled | None = None) -> None:
        """Give back what a request admitted held (queued, sent in the background, in order)."""
        ...

    async def hold(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> list[str] | int:
        """Hold ``amounts[i]`` on budget ``names[i]`` if each fits, all or nothing, with no lease:
        a hold kept until a :class:`Done` names it, on whichever instance (a batch's worst case,
        for hours). The holds, or the index of the first budget it did not fit."""
        ...

    async def ready(self) -> bool:
        """Whether the counters can decide now (a readiness check)."""
        ...
