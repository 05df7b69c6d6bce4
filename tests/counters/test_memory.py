"""MemoryCounters without a server: GCRA smoothness, one call for gates and rates together,
all-or-nothing budget holds, settling and persistence seeding."""

from __future__ import annotations

import asyncio
import time

import pytest

from keygate.counters import Counters, MemoryCounters, Rate, Refused, SyncCounters
from keygate.counters.memory import monotonic

RPM10 = Rate("k:rpm", 10, 60.0)
GATE = ("k:conc", 1)


def take(c: MemoryCounters, now: float, rate: Rate = RPM10, cost: float = 1.0) -> bool:
    return not isinstance(c.take_now((rate,), (cost,), now), Refused)


def test_memory_counters_offer_the_plain_deciding_methods() -> None:
    c: Counters = MemoryCounters()
    assert isinstance(c, SyncCounters)
    assert RPM10.interval == 6.0 and RPM10.burst == pytest.approx(60.0)


# -- rates (GCRA) --------------------------------------------------------------------------------


def test_no_double_burst_at_a_window_edge() -> None:
    c = MemoryCounters()
    assert sum(take(c, 59.9) for _ in range(20)) == 10  # a full bucket, just before a "minute edge"
    assert sum(take(c, 60.1) for _ in range(20)) == 0  # no fresh window after the edge
    assert sum(take(c, 65.95) for _ in range(20)) == 1  # one every 6 s, smoothly


def test_a_drained_bucket_is_full_again_and_never_more_than_full() -> None:
    c = MemoryCounters()
    assert sum(take(c, 0.0) for _ in range(10)) == 10
    # Long after: the bucket refilled to its limit, not beyond (the idle hour saved nothing up).
    assert sum(take(c, 3600.0) for _ in range(20)) == 10


def test_refusal_changes_nothing_and_says_when() -> None:
    c = MemoryCounters()
    other = Rate("t:rpm", 100, 60.0)
    for _ in range(10):
        c.take_now((RPM10, other), (1, 1), 0.0)
    d = c.take_now((RPM10, other), (1, 1), 0.0)
    assert isinstance(d, Refused) and d.denied == RPM10 and d.retry_after == pytest.approx(6.0)
    assert d.remaining == [0, 90]  # the team counter was not charged for the refused request
    assert d.reset == [pytest.approx(60.0), pytest.approx(6.0)]  # seconds until each is full again


def test_a_cost_that_can_never_fit_backs_off_a_full_period() -> None:
    c = MemoryCounters()
    tpm = Rate("k:tpm", 100, 60.0, "tokens")
    d = c.take_now((tpm,), (101.0,), 0.0)
    assert isinstance(d, Refused) and d.denied == tpm
    assert d.retry_after == 60.0 and d.remaining == [100]  # an empty bucket, and still no room
    assert take(c, 0.0, tpm, 100)  # the refused request took nothing


def test_a_later_rate_refusing_puts_back_the_earlier_ones() -> None:
    c = MemoryCounters()
    fresh = Rate("t:rpm", 100, 60.0)  # never used before: its counter must not appear
    used = Rate("t:rph", 1000, 3600.0)
    assert not isinstance(c.take_now((used,), (1.0,), 0.0), Refused)
    for _ in range(10):
        assert not isinstance(c.take_now((RPM10,), (1.0,), 0.0), Refused)
    d = c.take_now((fresh, used, RPM10), (1.0, 1.0, 1.0), 0.0, (GATE,))
    assert isinstance(d, Refused) and d.denied == RPM10
    assert d.remaining == [100, 999, 0]  # as before the refused request
    assert c.in_flight("k:conc") == 0
    again = c.take_now((fresh, used), (1.0, 1.0), 0.0)
    assert again == [0.6, 7.2]  # each bucket one more unit ahead


def test_adjust_refunds_and_charges_tokens() -> None:
    c = MemoryCounters()
    tpm = Rate("k:tpm", 1000, 60.0, "tokens")
    assert take(c, 0.0, tpm, 1000)
    assert not take(c, 0.0, tpm, 1)
    c.adjust(tpm, -900, 0.0)  # the request used 100, not 1000
    assert take(c, 0.0, tpm, 900)
    assert not take(c, 0.0, tpm, 1)
    c.adjust(tpm, -1000, 0.0)  # more than the bucket holds: full again, never more than full
    assert take(c, 0.0, tpm, 1000) and not take(c, 0.0, tpm, 1)


def test_adjust_after_the_bucket_drained_counts_from_now() -> None:
    c = MemoryCounters()
    tpm = Rate("k:tpm", 1000, 60.0, "tokens")
    assert take(c, 0.0, tpm, 500)
    c.adjust(tpm, 400, 120.0)  # long after: the earlier charge has drained, only the 400 count
    assert take(c, 120.0, tpm, 600) and not take(c, 120.0, tpm, 1)


# -- concurrency gates ---------------------------------------------------------------------------


def test_take_enters_gates_and_rates_together_or_not_at_all() -> None:
    c = MemoryCounters()
    first = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert first == [6.0] and c.in_flight("k:conc") == 1  # the bucket runs 6 s ahead
    full = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert isinstance(full, Refused) and full.gate == "k:conc" and full.denied is None
    assert full.remaining == [] and full.reset == []
    c.leave(["k:conc"])
    # The full gate charged nothing: 9 more fit in the bucket of 10.
    for _ in range(9):
        assert not isinstance(c.take_now((RPM10,), (1.0,), 0.0, (GATE,)), Refused)
        c.leave(["k:conc"])
    refused = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert isinstance(refused, Refused) and refused.denied == RPM10 and refused.gate is None
    assert c.in_flight("k:conc") == 0  # a refused rate enters no gate


def test_gates_count_up_to_their_cap_and_leaving_never_goes_negative() -> None:
    c = MemoryCounters()
    gates = (("k:conc", 2), ("t:conc", 3))
    assert c.take_now((), (), 0.0, gates) == []
    assert c.take_now((), (), 0.0, gates) == []
    refused = c.take_now((), (), 0.0, gates)
    assert isinstance(refused, Refused) and refused.gate == "k:conc"
    assert (c.in_flight("k:conc"), c.in_flight("t:conc")) == (2, 2)  # the refusal entered neither
    c.leave(["k:conc", "t:conc"])
    c.leave(["k:conc", "t:conc"])
    c.leave(["k:conc"])  # one too many: stays at zero
    assert (c.in_flight("k:conc"), c.in_flight("t:conc")) == (0, 0)
    assert c.take_now((), (), 0.0, gates) == [] and c.in_flight("k:conc") == 1


def test_finish_leaves_gates_and_corrects_token_rates_in_one_call() -> None:
    c = MemoryCounters()
    tpm = Rate("k:tpm", 1000, 60.0, "tokens")
    assert c.take_now((tpm,), (1000.0,), 0.0, (GATE,)) == [60.0]  # the worst case fills the bucket
    c.finish(["k:conc"], (tpm,), -900, 0.0)  # it used 100 tokens, not 1000
    assert c.in_flight("k:conc") == 0
    assert c.take_now((tpm,), (900.0,), 0.0, (GATE,)) == [60.0]  # the refunded 900 fit again
    c.finish(["k:conc"], (tpm,), 0, 0.0)
    assert c.in_flight("k:conc") == 0 and isinstance(c.take_now((tpm,), (1.0,), 0.0), Refused)


def test_the_awaiting_take_decides_as_take_now() -> None:
    plain, awaited = MemoryCounters(), MemoryCounters()

    async def run() -> list[object]:
        return [await awaited.take((RPM10,), (1.0,), 0.0, (("g", 20),)) for _ in range(12)]

    expected = [plain.take_now((RPM10,), (1.0,), 0.0, (("g", 20),)) for _ in range(12)]
    assert asyncio.run(run()) == expected
    assert isinstance(expected[-1], Refused) and awaited.in_flight("g") == 10


def test_monotonic_is_the_clock_the_guards_use() -> None:
    before = time.monotonic()
    assert before <= monotonic() <= time.monotonic()


# -- budgets -------------------------------------------------------------------------------------


def test_budget_holds_are_all_or_nothing() -> None:
    c = MemoryCounters()

    async def run() -> None:
        assert await c.reserve(["a", "b"], [10, 100], [6, 6]) is None
        assert await c.reserve(["b", "a"], [100, 10], [6, 6]) == 1  # "a" does not fit: nothing held
        assert await c.available(["a", "b"]) == [(0.0, 6.0), (0.0, 6.0)]
        assert c.settle("a", 6, 2) == (0.0, 2.0)
        assert await c.available(["a"]) == [(2.0, 0.0)]

    asyncio.run(run())


def test_a_refused_budget_hold_holds_nothing() -> None:
    c = MemoryCounters()
    assert c.reserve_now(["a"], [10.0], [4.0]) is None
    assert c.reserve_now(["a", "b"], [10.0, 5.0], [4.0, 6.0]) == 1  # b does not fit
    assert c.available_now(["a", "b"]) == [(0.0, 4.0), (0.0, 0.0)]  # a still holds only the first 4
    assert c.reserve_now(["b", "a"], [5.0, 10.0], [5.0, 7.0]) == 1  # a: 4 + 7 > 10
    assert c.available_now(["a", "b"]) == [(0.0, 4.0), (0.0, 0.0)]


def test_a_hold_may_use_the_budget_exactly() -> None:
    c = MemoryCounters()
    assert c.reserve_now(["a"], [0.3], [0.1 + 0.2]) is None  # 0.30000000000000004 still fits
    assert c.reserve_now(["a"], [0.3], [1e-9]) == 0


def test_settle_releases_the_hold_adds_the_spend_and_never_holds_less_than_nothing() -> None:
    c = MemoryCounters()
    assert c.reserve_now(["a"], [10.0], [5.0]) is None
    assert c.settle("a", 5.0, 3.0) == (0.0, 3.0)
    assert c.available_now(["a"]) == [(3.0, 0.0)]
    assert c.settle("a", 5.0, 1.0) == (3.0, 4.0)  # releasing more than is held: held stays 0
    assert c.available_now(["a"]) == [(4.0, 0.0)]
    assert c.settle("never-held", 0.0, 2.5) == (0.0, 2.5)  # a counter settled before any hold
    assert c.snapshot_now(["a", "never-held", "unknown"]) == {
        "a": (4.0, 0.0),
        "never-held": (2.5, 0.0),
        "unknown": (0.0, 0.0),
    }


def test_load_seeds_spend_and_never_lowers_it() -> None:
    c = MemoryCounters()
    c.settle("a", 0.0, 5.0)
    c.load({"a": 3.0, "b": 7.0})  # persisted spend older than what this process counted: kept max
    assert c.available_now(["a", "b"]) == [(5.0, 0.0), (7.0, 0.0)]
    c.load({"a": 9.0})
    assert c.snapshot_now(["a"]) == {"a": (9.0, 0.0)}
    assert c.reserve_now(["a"], [10.0], [1.0]) is None and c.reserve_now(["a"], [10.0], [0.5]) == 0
