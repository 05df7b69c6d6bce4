"""The per-request fast path of the limits, without a server: one counters call per request for
gates and rates, budget holds, budget period windows, rate-limit headers, the request's worst-case
estimate, spend bookkeeping."""

from __future__ import annotations

import asyncio
import calendar
import math
from collections.abc import Sequence

import orjson
import pytest

from keygate import routes
from keygate.context import Context
from keygate.counters import MemoryCounters, Rate, Refused
from keygate.guards._estimate import estimate
from keygate.guards.ratelimit import Plan, fmt_reset
from keygate.headers import filter_response
from keygate.spend import SpendBook, period_bounds, period_end, period_key

RPM10 = Rate("k:rpm", 10, 60.0)
GATE = ("k:conc", 1)


def test_take_enters_gates_and_rates_together_or_not_at_all() -> None:
    c = MemoryCounters()
    first = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert first == [6.0] and c.in_flight("k:conc") == 1  # the bucket runs 6 s ahead
    full = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert isinstance(full, Refused) and full.gate == "k:conc" and full.denied is None
    c.leave(["k:conc"])
    # The full gate charged nothing: 9 more fit in the bucket of 10.
    for _ in range(9):
        assert not isinstance(c.take_now((RPM10,), (1.0,), 0.0, (GATE,)), Refused)
        c.leave(["k:conc"])
    refused = c.take_now((RPM10,), (1.0,), 0.0, (GATE,))
    assert isinstance(refused, Refused) and refused.denied == RPM10 and refused.gate is None
    assert c.in_flight("k:conc") == 0  # a refused rate enters no gate


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


def test_a_refused_budget_hold_holds_nothing() -> None:
    c = MemoryCounters()
    assert c.reserve_now(["a"], [10.0], [4.0]) is None
    assert c.reserve_now(["a", "b"], [10.0, 5.0], [4.0, 6.0]) == 1  # b does not fit
    assert c.available_now(["a", "b"]) == [(0.0, 4.0), (0.0, 0.0)]  # a still holds only the first 4
    assert c.reserve_now(["b", "a"], [5.0, 10.0], [5.0, 7.0]) == 1  # a: 4 + 7 > 10
    assert c.available_now(["a", "b"]) == [(0.0, 4.0), (0.0, 0.0)]


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


def test_headers_name_the_tightest_limit_of_each_kind() -> None:
    rates = [
        Rate("k:rps", 5, 1.0),  # 0.2 s per request
        Rate("k:rpm", 100, 60.0),  # 0.6 s per request
        Rate("k:tpm", 1000, 60.0, "tokens"),  # 0.06 s per token
    ]
    plan = Plan(rates[:2], rates[2:], [])
    now = 1000.0
    # Seconds until each bucket is full again, and the remaining counts they mean.
    cases = [
        ([0.2, 0.6, 0.06], [4, 99, 999]),
        ([0.2, 0.6, 0.06], [4, 99, 999]),  # the same values again
        ([0.9996, 58.2, 59.5], [0, 3, 8]),  # the other requests limit is tighter; 1000ms; 1m0s
        ([0.0, 7.2, 3725.0], [5, 88, 0]),  # far past a full bucket: 0 remaining, never negative
    ]
    for ahead, remaining in cases:
        out = plan.headers([now + a for a in ahead], now, [("x-other", "1")])
        best = 0 if remaining[0] <= remaining[1] else 1
        assert out == [
            ("x-other", "1"),
            ("x-ratelimit-limit-requests", str(rates[best].limit)),
            ("x-ratelimit-remaining-requests", str(remaining[best])),
            ("x-ratelimit-reset-requests", fmt_reset(ahead[best])),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", str(remaining[2])),
            ("x-ratelimit-reset-tokens", fmt_reset(ahead[2])),
        ]
    assert fmt_reset(0.9996) == "1000ms" and fmt_reset(59.5) == "1m0s" and fmt_reset(-0.1) == "0ms"
    assert fmt_reset(0.0004) == "0ms" and fmt_reset(0.2) == "200ms" and fmt_reset(3725.0) == "1h2m5s"


def test_finish_leaves_gates_and_corrects_token_rates_in_one_call() -> None:
    c = MemoryCounters()
    tpm = Rate("k:tpm", 1000, 60.0, "tokens")
    assert c.take_now((tpm,), (1000.0,), 0.0, (GATE,)) == [60.0]  # the worst case fills the bucket
    c.finish(["k:conc"], (tpm,), -900, 0.0)  # it used 100 tokens, not 1000
    assert c.in_flight("k:conc") == 0
    assert c.take_now((tpm,), (900.0,), 0.0, (GATE,)) == [60.0]  # the refunded 900 fit again
    c.finish(["k:conc"], (tpm,), 0, 0.0)
    assert c.in_flight("k:conc") == 0 and isinstance(c.take_now((tpm,), (1.0,), 0.0), Refused)


def _ctx(route: str, body: dict[str, object]) -> Context:
    ctx = Context("r", "POST", route, "", {}, "127.0.0.1")
    ctx.route = routes.match("POST", route)
    ctx.body = orjson.dumps(body)
    ctx.json = body
    return ctx


@pytest.mark.parametrize(
    ("body", "output", "given", "field"),
    [
        ({}, 4096, False, "max_completion_tokens"),
        ({"max_tokens": 100}, 100, True, "max_tokens"),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50, True, "max_completion_tokens"),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100, True, "max_completion_tokens"),
        ({"max_completion_tokens": "x", "max_tokens": True}, 4096, False, "max_completion_tokens"),
        ({"max_tokens": 0}, 4096, False, "max_tokens"),
    ],
)
def test_estimate_reads_the_output_cap_and_names_the_field_that_sets_it(
    body: dict[str, object], output: int, given: bool, field: str
) -> None:
    ctx = _ctx("/v1/chat/completions", {"model": "m", **body})
    est = estimate(ctx, 4096)
    assert est == ((len(ctx.body) + 3) // 4, output, given, field)
    assert ctx.estimate == est  # shared with the other limit guards


def test_estimate_of_embeddings_and_unmetered_routes() -> None:
    emb = _ctx("/v1/embeddings", {"model": "m", "input": "x" * 40})
    assert estimate(emb, 4096) == ((len(emb.body) + 3) // 4, 0, False, "")
    mod = _ctx("/v1/moderations", {"input": "x"})
    assert estimate(mod, 4096) == (0, 0, False, "")


def test_keygate_rate_limit_headers_replace_the_upstreams_by_name() -> None:
    upstream = [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining-requests", "99"),
        ("X-RateLimit-Remaining-Tokens", "5"),
        ("set-cookie", "a=b"),
    ]
    mine = frozenset({"x-ratelimit-remaining-requests"})
    assert filter_response(upstream, mine) == [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining-tokens", "5"),
    ]
    assert ("x-ratelimit-remaining-requests", "99") in filter_response(upstream)
