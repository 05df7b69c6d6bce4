"""The per-request fast path of the limits, without a server: one counters call per request for
gates and rates, budget period windows, cached rate-limit headers, spend bookkeeping."""

from __future__ import annotations

import asyncio
import calendar
import math
from collections.abc import Sequence

import pytest

from keygate.counters import MemoryCounters, Rate
from keygate.guards.ratelimit import Plan, fmt_reset
from keygate.spend import SpendBook, period_bounds, period_end, period_key

RPM10 = Rate("k:rpm", 10, 60.0)
GATE = ("k:conc", 1)


def test_take_enters_gates_and_rates_together_or_not_at_all() -> None:
    c = MemoryCounters()
    first = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert first.allowed and first.gate is None and c.in_flight("k:conc") == 1
    full = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert not full.allowed and full.gate == "k:conc" and full.denied is None
    c.leave(["k:conc"])
    # The full gate charged nothing: 9 more fit in the bucket of 10.
    for _ in range(9):
        assert c.take_now((RPM10,), (1.0,), 0.0, (GATE,)).allowed
        c.leave(["k:conc"])
    refused = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert not refused.allowed and refused.denied == RPM10 and refused.gate is None
    assert c.in_flight("k:conc") == 0  # a refused rate enters no gate


def test_a_later_rate_refusing_puts_back_the_earlier_ones() -> None:
    c = MemoryCounters()
    fresh = Rate("t:rpm", 100, 60.0)  # never used before: its counter must not appear
    used = Rate("t:rph", 1000, 3600.0)
    assert c.take_now((used,), (1.0,), 0.0).allowed
    for _ in range(10):
        assert c.take_now((RPM10,), (1.0,), 0.0).allowed
    d = c.take_now((fresh, used, RPM10), (1.0, 1.0, 1.0), 0.0, (GATE,))
    assert not d.allowed and d.denied == RPM10
    assert d.remaining == [100, 999, 0]  # as before the refused request
    assert c.in_flight("k:conc") == 0
    again = c.take_now((fresh, used), (1.0, 1.0), 0.0)
    assert again.remaining == [99, 998]


class _Store:
    def __init__(self) -> None:
        self.saved: list[list[str]] = []

    def load_spend(self) -> dict[str, tuple[float, float]]:
        return {}

    def save_spend(self, rows: Sequence[tuple[str, float, float]], ts: float) -> None:
        self.saved.append([name for name, _, _ in rows])


def test_spend_touched_after_a_flush_is_written_by_the_next_one() -> None:
    store = _Store()
    book = SpendBook(MemoryCounters(), store, 60.0)

    async def run() -> None:
        book.touch("a")
        await book.flush()
        book.touch("b")
        book.touch("b")
        await book.flush()
        await book.flush()  # nothing changed: nothing written
        await book.close()

    asyncio.run(run())
    assert store.saved == [["a"], ["b"]]


def _utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return float(calendar.timegm((y, mo, d, h, mi, s)))


@pytest.mark.parametrize("period", ["day", "week", "month"])
@pytest.mark.parametrize(
    "ts",
    [
        _utc(2024, 12, 31, 23, 59, 59) + 0.5,  # last second of a year (and of ISO week 2025-W01)
        _utc(2025, 1, 1),
        _utc(2024, 2, 29, 12),  # a leap day
        _utc(2025, 8, 17, 23, 59, 59),  # Sunday night
        _utc(2025, 8, 18),  # Monday midnight
        _utc(2021, 1, 3, 8),  # ISO week 2020-W53
    ],
)
def test_period_bounds_hold_exactly_one_period_name(period: str, ts: float) -> None:
    start, end = period_bounds(period, ts)
    assert start <= ts < end
    name = period_key(period, ts)
    assert period_key(period, start) == name == period_key(period, end - 0.001)
    assert period_key(period, start - 0.001) != name and period_key(period, end) != name
    assert end - ts == period_end(period, ts) or end - ts < 1


def test_lifetime_never_ends() -> None:
    assert period_bounds("lifetime", 1e9) == (-math.inf, math.inf)


def test_headers_name_the_tightest_limit_of_each_kind_and_reuse_nothing_stale() -> None:
    rates = [
        Rate("k:rps", 5, 1.0),
        Rate("k:rpm", 100, 60.0),
        Rate("k:tpm", 1000, 60.0, "tokens"),
    ]
    plan = Plan(rates[:2], rates[2:], [])
    cases = [
        ([4, 99, 10], [0.2, 0.6, 0.0004]),
        ([4, 99, 10], [0.2, 0.6, 0.0004]),  # the same values again (cached headers)
        ([4, 3, 10], [0.9996, 0.6, 59.5]),  # the other requests limit is tighter; 1000ms; 1m0s
        ([0, 3, 0], [0.0, 7.2, 3725.0]),
        ([4, 99, 10], [-0.1, 0.6, 1.0]),
    ]
    for remaining, reset in cases:
        out = plan.headers(remaining, reset, [("x-other", "1")])
        best = 0 if remaining[0] <= remaining[1] else 1
        assert out == [
            ("x-other", "1"),
            ("x-ratelimit-limit-requests", str(rates[best].limit)),
            ("x-ratelimit-remaining-requests", str(remaining[best])),
            ("x-ratelimit-reset-requests", fmt_reset(reset[best])),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", str(remaining[2])),
            ("x-ratelimit-reset-tokens", fmt_reset(reset[2])),
        ]
    assert fmt_reset(0.9996) == "1000ms" and fmt_reset(59.5) == "1m0s" and fmt_reset(-0.1) == "0ms"
