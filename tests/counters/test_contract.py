"""The Counters contract, the same tests on each implementation: in process and on Redis.

Everything here goes through the protocol (``await`` the deciding calls; settling calls are sent in
the background on Redis, so a test waits for them with ``drain``) and uses the real clock, since
Redis decides on its own. The Redis runs use a key prefix of their own on the shared server and
delete it afterwards; what only Redis does (leases, rebuilding, NOSCRIPT, sharing between
instances) is in test_redis.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from keygate.counters import MemoryCounters, Rate, Refused
from keygate.counters.redis import RedisCounters

from ..redis_helpers import SHARED_URL, drop_prefix, fresh_prefix

RPM10 = Rate("k:rpm", 10, 60.0)
GATE = ("k:conc", 1)

Body = Callable[[Any], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Body], None]]:
    """``run(body)``: ``await body(counters)`` on fresh counters of the parametrized kind."""
    prefix = fresh_prefix()

    def go(body: Body) -> None:
        async def main() -> None:
            if request.param == "memory":
                await body(MemoryCounters())
                return
            counters = RedisCounters(SHARED_URL, prefix=prefix)
            await counters.start()
            try:
                await body(counters)
            finally:
                await counters.close()

        asyncio.run(main())

    yield go
    if request.param == "redis":
        drop_prefix(prefix)


async def drain(c: Any) -> None:
    if isinstance(c, RedisCounters):
        await c.drain()


async def passes(c: Any, n: int, rate: Rate = RPM10, cost: float = 1.0) -> int:
    return sum([not isinstance(await c.take((rate,), (cost,), time.monotonic()), Refused) for _ in range(n)])


# -- rates (GCRA) --------------------------------------------------------------------------------


def test_a_full_bucket_lets_exactly_its_limit_through(run: Callable[[Body], None]) -> None:
    async def body(c: Any) -> None:
        assert await passes(c, 25) == 10

    run(body)


def test_the_bucket_refills_continuously_and_never_beyond_full(run: Callable[[Body], None]) -> None:
    fast = Rate("k:rps", 5, 0.5)  # one every 100 ms

    async def body(c: Any) -> None:
        assert await passes(c, 10, fast) == 5
        await asyncio.sleep(0.25)  # time must pass: the refill is the behaviour under test
        assert await passes(c, 10, fast) == 2
        await asyncio.sleep(1.0)  # long idle saves up nothing beyond a full bucket
        assert await passes(c, 20, fast) == 5

    run(body)


def test_a_taken_request_reports_how_far_ahead_its_bucket_runs(run: Callable[[Body], None]) -> None:
    async def body(c: Any) -> None:
        now = time.monotonic()
        taken = await c.take((RPM10,), (1.0,), now)
        assert taken[0] - now == pytest.approx(6.0, abs=0.05)

    run(body)


def test_refusal_changes_nothing_and_says_when(run: Callable[[Body], None]) -> None:
    other = Rate("t:rpm", 100, 60.0)

    async def body(c: Any) -> None:
        for _ in range(10):
            await c.take((RPM10, other), (1, 1), time.monotonic())
        d = await c.take((RPM10, other), (1, 1), time.monotonic())
        assert isinstance(d, Refused) and d.denied == RPM10
        assert d.retry_after == pytest.approx(6.0, abs=0.05)
        assert d.remaining == [0, 90]  # the team counter was not charged for the refused request
        assert d.reset[0] == pytest.approx(60.0, abs=0.05) and d.reset[1] == pytest.approx(6.0, abs=0.05)

    run(body)


def test_a_cost_that_can_never_fit_backs_off_a_full_period(run: Callable[[Body], None]) -> None:
    tpm = Rate("k:tpm", 100, 60.0, "tokens")

    async def body(c: Any) -> None:
        d = await c.take((tpm,), (101.0,), time.monotonic())
        assert isinstance(d, Refused) and d.denied == tpm
        assert d.retry_after == 60.0 and d.remaining == [100]
        assert await passes(c, 1, tpm, 100) == 1  # the refused request took nothing

    run(body)


def test_a_later_rate_refusing_puts_back_the_earlier_ones(run: Callable[[Body], None]) -> None:
    fresh = Rate("t:rpm", 100, 60.0)
    used = Rate("t:rph", 1000, 3600.0)

    async def body(c: Any) -> None:
        await c.take((used,), (1.0,), time.monotonic())
        assert await passes(c, 10) == 10
        d = await c.take((fresh, used, RPM10), (1.0, 1.0, 1.0), time.monotonic(), (GATE,))
        assert isinstance(d, Refused) and d.denied == RPM10
        assert d.remaining == [100, 999, 0]
        # The gate was not entered: a request that needs it alone gets in.
        assert not isinstance(await c.take((), (), time.monotonic(), (GATE,)), Refused)

    run(body)


def test_adjust_refunds_and_charges_tokens(run: Callable[[Body], None]) -> None:
    tpm = Rate("k:tpm", 1000, 60.0, "tokens")

    async def body(c: Any) -> None:
        assert await passes(c, 1, tpm, 1000) == 1
        assert await passes(c, 1, tpm, 1) == 0
        c.adjust(tpm, -900, time.monotonic())  # it used 100, not 1000
        await drain(c)
        assert await passes(c, 1, tpm, 900) == 1
        assert await passes(c, 1, tpm, 1) == 0
        c.adjust(tpm, -5000, time.monotonic())  # more than the bucket holds: full, never more
        await drain(c)
        assert await passes(c, 1, tpm, 1000) == 1 and await passes(c, 1, tpm, 1) == 0

    run(body)


# -- concurrency gates ---------------------------------------------------------------------------


def test_gates_count_up_to_their_cap_all_or_nothing(run: Callable[[Body], None]) -> None:
    gates = (("k:conc", 2), ("t:conc", 3))

    async def body(c: Any) -> None:
        now = time.monotonic()
        assert await c.take((), (), now, gates) == []
        assert await c.take((), (), now, gates) == []
        refused = await c.take((), (), now, gates)
        assert isinstance(refused, Refused) and refused.gate == "k:conc" and refused.denied is None
        assert refused.remaining == [] and refused.reset == []
        # t:conc holds 2 (the refusal entered neither): one more fits there on its own.
        assert await c.take((), (), now, (("t:conc", 3),)) == []
        assert isinstance(await c.take((), (), now, (("t:conc", 3),)), Refused)
        c.leave(["k:conc", "t:conc"])
        await drain(c)
        assert await c.take((), (), now, gates) == []

    run(body)


def test_a_full_gate_charges_no_rate(run: Callable[[Body], None]) -> None:
    async def body(c: Any) -> None:
        assert not isinstance(await c.take((RPM10,), (1.0,), time.monotonic(), (GATE,)), Refused)
        full = await c.take((RPM10,), (1.0,), time.monotonic(), (GATE,))
        assert isinstance(full, Refused) and full.gate == "k:conc"
        c.leave(["k:conc"])
        await drain(c)
        assert await passes(c, 20) == 9  # the full gate's refusal took nothing from the bucket

    run(body)


def test_finish_leaves_gates_and_corrects_token_rates_in_one_call(run: Callable[[Body], None]) -> None:
    tpm = Rate("k:tpm", 1000, 60.0, "tokens")

    async def body(c: Any) -> None:
        assert not isinstance(await c.take((tpm,), (1000.0,), time.monotonic(), (GATE,)), Refused)
        c.finish(["k:conc"], (tpm,), -900, time.monotonic())
        await drain(c)
        assert not isinstance(await c.take((tpm,), (900.0,), time.monotonic(), (GATE,)), Refused)

    run(body)


# -- budgets -------------------------------------------------------------------------------------


def test_budget_holds_are_all_or_nothing(run: Callable[[Body], None]) -> None:
    async def body(c: Any) -> None:
        assert await c.reserve(["a", "b"], [10, 100], [6, 6]) is None
        assert await c.reserve(["b", "a"], [100, 10], [6, 6]) == 1  # "a" does not fit: nothing held
        assert await c.available(["a", "b"]) == [(0.0, 6.0), (0.0, 6.0)]
        c.settle("a", 6, 2)
        await drain(c)
        assert await c.available(["a"]) == [(2.0, 0.0)]

    run(body)


def test_a_hold_may_use_the_budget_exactly(run: Callable[[Body], None]) -> None:
    async def body(c: Any) -> None:
        assert await c.reserve(["a"], [0.3], [0.1 + 0.2]) is None  # 0.30000000000000004 fits
        assert await c.reserve(["a"], [0.3], [1e-9]) == 0

    run(body)


def test_settle_releases_the_hold_and_adds_the_spend(run: Callable[[Body], None]) -> None:
    async def body(c: Any) -> None:
        assert await c.reserve(["a"], [10.0], [5.0]) is None
        c.settle("a", 5.0, 3.0)
        c.settle("never-held", 0.0, 2.5)  # a counter settled before any hold
        await drain(c)
        assert await c.available(["a"]) == [(3.0, 0.0)]
        snap = await c.snapshot(["a", "never-held", "unknown"])
        assert snap == {"a": (3.0, 0.0), "never-held": (2.5, 0.0), "unknown": (0.0, 0.0)}

    run(body)


# -- lockouts ------------------------------------------------------------------------------------


def test_failures_within_the_window_lock_out_once(run: Callable[[Body], None]) -> None:
    async def body(c: Any) -> None:
        locked: list[str] = []
        for _ in range(2):
            c.fail("192.0.2.1", 60.0, 3, 30.0, locked.append)
        await drain(c)
        assert c.locked("192.0.2.1") == 0.0 and locked == []
        c.fail("192.0.2.1", 60.0, 3, 30.0, locked.append)
        await drain(c)
        assert 29.0 < c.locked("192.0.2.1") <= 30.0 and locked == ["192.0.2.1"]
        assert c.locked("192.0.2.2") == 0.0  # another address is not

    run(body)
