"""What only the Redis counters do: one call for everything a request needs, leases that outlive a
vanished instance by at most their time, budgets rebuilt from the store after Redis lost them,
scripts loaded again after a restart, lockouts shared between instances, and behaviour while
Redis is unreachable. Two RedisCounters on one prefix stand for two gateway instances."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from keygate.counters import Admitted, Ask, BudgetShort, CountersUnavailable, Done, Rate, Refused
from keygate.counters.redis import RedisCounters
from keygate.types import Secret

from ..redis_helpers import SHARED_URL, drop_prefix, fresh_prefix, private_redis

RPM = Rate("k:rpm", 10, 60.0)


@pytest.fixture
def prefix() -> Iterator[str]:
    p = fresh_prefix()
    yield p
    drop_prefix(p)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())


async def started(prefix: str, url: str = SHARED_URL, **kw: object) -> RedisCounters:
    c = RedisCounters(url, prefix=prefix, **kw)  # type: ignore[arg-type]
    await c.start()
    return c


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def budget_ask(limit: float, prompt: float, output: int) -> Ask:
    return Ask(
        budgets=["key:k|tokens|lifetime"],
        budget_limits=[limit],
        base=[prompt],
        unit=[1.0],
        output=output,
        need=1,
        step=1,
    )


def test_one_admit_takes_rates_gates_and_budget_together_or_nothing(prefix: str) -> None:
    async def body() -> None:
        c = await started(prefix)
        try:
            team = Rate("t:rpm", 1, 60.0)
            ask = budget_ask(100.0, 10.0, 50)
            ask.rates, ask.costs, ask.gates = [RPM, team], [1.0, 1.0], [("k:conc", 5)]
            first = await c.admit(ask, 0.0)
            assert isinstance(first, Admitted) and first.output == 50 and len(first.afters) == 2
            # The team's rate refuses the second: nothing of it is charged anywhere.
            second = await c.admit(ask, 0.0)
            assert isinstance(second, Refused) and second.denied == team
            assert await c.available(["key:k|tokens|lifetime"]) == [(0.0, 60.0)]
            assert second.remaining == [9, 0]
            # Without the team rate, the budget clamps the output to what is left: 100-60-10 = 30.
            ask.rates, ask.costs = [RPM], [1.0]
            third = await c.admit(ask, 0.0)
            assert isinstance(third, Admitted) and third.output == 30
            # Nothing left (a prompt of 10 and one output token do not fit): refused by the budget.
            short = await c.admit(ask, 0.0)
            assert isinstance(short, BudgetShort) and short.index == 0
            got: list[list[tuple[float, float]]] = []
            c.release(
                Done(first.lease, ["k:conc"], budgets=ask.budgets, holds=first.holds, spent=[20.0]),
                got.append,
            )
            await c.drain()
            assert got == [[(0.0, 20.0)]]  # spent before and after, for the soft-threshold notice
            assert await c.available(["key:k|tokens|lifetime"]) == [(20.0, 40.0)]
        finally:
            await c.close()

    run(body)


def test_a_vanished_instance_frees_its_slots_and_is_charged_its_holds_within_the_lease(prefix: str) -> None:
    async def body() -> None:
        lost = await started(prefix, lease=0.6)
        other = await started(prefix, lease=0.6)
        try:
            ask = budget_ask(100.0, 10.0, 40)
            ask.gates = [("k:conc", 1)]
            assert isinstance(await lost.admit(ask, 0.0), Admitted)
            await lost.close()  # gone without giving anything back (as after kill -9)
            t0 = time.monotonic()
            assert isinstance(await other.admit(Ask(gates=[("k:conc", 1)]), 0.0), Refused)

            async def free() -> bool:
                return isinstance(await other.admit(Ask(gates=[("k:conc", 1)]), 0.0), Admitted)

            await until(free)
            assert 0.4 < time.monotonic() - t0 < 1.5
            # The hold expired with its lease: charged at its worst case, not forgotten.
            assert await other.available(["key:k|tokens|lifetime"]) == [(50.0, 0.0)]
        finally:
            await other.close()

    run(body)


def test_leases_of_requests_in_flight_are_renewed(prefix: str) -> None:
    async def body() -> None:
        a = await started(prefix, lease=0.45)  # renewed every 0.15 s
        b = await started(prefix, lease=0.45)
        try:
            taken = await a.admit(Ask(gates=[("k:conc", 1)]), 0.0)
            assert isinstance(taken, Admitted)
            await asyncio.sleep(1.2)  # well past the lease: only renewal keeps the slot
            assert isinstance(await b.admit(Ask(gates=[("k:conc", 1)]), 0.0), Refused)
            a.release(Done(taken.lease, ["k:conc"]))
            await a.drain()
            assert isinstance(await b.admit(Ask(gates=[("k:conc", 1)]), 0.0), Admitted)
        finally:
            await a.close()
            await b.close()

    run(body)


def test_budgets_are_rebuilt_from_the_store_once_after_redis_lost_them(prefix: str) -> None:
    loads: list[int] = []

    def load_spend() -> dict[str, float]:
        loads.append(1)
        return {"key:k|tokens|lifetime": 95.0}

    async def body() -> None:
        a = await started(prefix, load_spend=load_spend)
        b = await started(prefix, load_spend=load_spend)
        try:
            # Before any budgeted request is admitted, the persisted spend is loaded: 5 left.
            assert isinstance(await a.admit(budget_ask(100.0, 10.0, 10), 0.0), BudgetShort)
            assert isinstance(await b.admit(budget_ask(100.0, 2.0, 10), 0.0), Admitted)
            assert loads == [1]  # the second instance found it loaded
            drop_prefix(prefix)  # Redis restarted empty
            assert await a.snapshot(["key:k|tokens|lifetime"]) == {"key:k|tokens|lifetime": (95.0, 0.0)}
            assert isinstance(await b.admit(budget_ask(100.0, 10.0, 10), 0.0), BudgetShort)
            assert loads == [1, 1]
        finally:
            await a.close()
            await b.close()

    run(body)


def test_scripts_are_loaded_again_after_redis_forgot_them(prefix: str) -> None:
    async def body() -> None:
        c = await started(prefix)
        try:
            assert isinstance(await c.admit(Ask([RPM], [1.0]), 0.0), Admitted)
            redis.Redis.from_url(SHARED_URL).script_flush()
            assert isinstance(await c.admit(Ask([RPM], [1.0]), 0.0), Admitted)
            redis.Redis.from_url(SHARED_URL).script_flush()
            c.leave([])  # (nothing)
            c.adjust(RPM, -2.0, 0.0)  # a queued update meets NOSCRIPT too: loaded and resent
            await c.drain()
            left = await c.admit(Ask([RPM], [1.0]), 0.0)
            assert isinstance(left, Admitted) and left.afters[0] == pytest.approx(6.0, abs=0.1)
        finally:
            await c.close()

    run(body)


def test_a_lockout_counted_on_one_instance_holds_on_the_other(prefix: str) -> None:
    async def body() -> None:
        a = await started(prefix)
        b = await started(prefix)
        try:
            await asyncio.sleep(0.1)  # both subscribed
            a.fail("198.51.100.7", 60.0, 2, 30.0)
            b.fail("198.51.100.7", 60.0, 2, 30.0)  # the second failure, counted on the other one
            await a.drain()
            await b.drain()

            async def locked_on_both() -> bool:
                return a.locked("198.51.100.7") > 29.0 and b.locked("198.51.100.7") > 29.0

            await until(locked_on_both, 2.0)
            c = await started(prefix)  # an instance started later learns the lockouts there are
            try:
                await until(lambda: asyncio.sleep(0, c.locked("198.51.100.7") > 29.0), 3.0)
            finally:
                await c.close()
        finally:
            await a.close()
            await b.close()

    run(body)


def test_unreachable_redis_refuses_to_decide_and_queued_updates_wait_for_it(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as server:

        async def body() -> None:
            c = await started("kg:", server.url, timeout=0.3)
            try:
                taken = await c.admit(Ask([RPM], [1.0], [("k:conc", 5)]), 0.0)
                assert isinstance(taken, Admitted) and await c.ready()
                server.stop()
                with pytest.raises(CountersUnavailable):
                    await c.admit(Ask([RPM], [1.0]), 0.0)
                assert not await c.ready()
                c.release(Done(taken.lease, ["k:conc"], [RPM], -1.0))  # queued while it is away
                c.fail("192.0.2.9", 60.0, 1, 30.0)
                assert c.locked("192.0.2.9") > 0  # counted in process meanwhile
                server.start()  # back (empty); the client reconnects by itself
                await until(c.ready)
                await c.drain()
                assert server.client().zscore("kg:lk", "192.0.2.9") is not None  # the queued failure arrived
                again = await c.admit(Ask([RPM], [1.0]), 0.0)
                assert isinstance(again, Admitted)
            finally:
                await c.close()

        run(body)


def test_a_password_is_sent_and_never_shown(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis", password="pw-under-test-1234") as server:

        async def body() -> None:
            good = await started("kg:", server.url, password=Secret("pw-under-test-1234"), timeout=0.5)
            bad = await started("kg:", server.url, password=Secret("wrong-pw-5678"), timeout=0.5)
            try:
                assert isinstance(await good.admit(Ask([RPM], [1.0]), 0.0), Admitted)
                assert await good.ready() and not await bad.ready()
                with pytest.raises(CountersUnavailable) as info:
                    await bad.admit(Ask([RPM], [1.0]), 0.0)
                assert "wrong-pw" not in str(info.value) and "WRONGPASS" in str(info.value)
            finally:
                await good.close()
                await bad.close()

        run(body)


def test_a_hung_redis_fails_a_call_within_the_timeout_and_recovers(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as server:

        async def body() -> None:
            c = await started("kg:", server.url, timeout=0.3)
            try:
                assert isinstance(await c.admit(Ask([RPM], [1.0]), 0.0), Admitted)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGSTOP)  # alive, connected, silent
                try:
                    t0 = time.monotonic()
                    with pytest.raises(CountersUnavailable):
                        await c.admit(Ask([RPM], [1.0]), 0.0)
                    assert time.monotonic() - t0 < 0.6  # one timeout, not one per retry
                finally:
                    server.proc.send_signal(signal.SIGCONT)
                await until(c.ready)
                assert isinstance(await c.admit(Ask([RPM], [1.0]), 0.0), Admitted)
            finally:
                await c.close()

        run(body)


def test_an_update_whose_reply_never_came_is_sent_again_when_redis_answers(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as server:

        async def body() -> None:
            c = await started("kg:", server.url, timeout=0.3)
            try:
                taken = await c.admit(Ask(gates=[("k:conc", 1)]), 0.0)
                assert isinstance(taken, Admitted)
                assert server.proc is not None
                server.proc.send_signal(signal.SIGSTOP)  # alive, connected, silent
                try:
                    c.release(Done(taken.lease, ["k:conc"]))  # written at once; no reply comes
                    await asyncio.sleep(0.6)  # past the timeout: the connection is dropped
                    assert not c._updates.idle  # queued again (or out again, on a new connection)
                finally:
                    server.proc.send_signal(signal.SIGCONT)
                await until(c.ready)
                await asyncio.wait_for(c.drain(), 5.0)
                assert server.client().zcard("kg:c:k:conc") == 0  # the slot was given back
                assert isinstance(await c.admit(Ask(gates=[("k:conc", 1)]), 0.0), Admitted)
            finally:
                await c.close()

        run(body)
