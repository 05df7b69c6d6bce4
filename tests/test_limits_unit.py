"""Counters and limit settings without a server: GCRA smoothness, budgets, config validation."""

from __future__ import annotations

import asyncio

import pytest

from keygate.counters import MemoryCounters, Rate, Refused
from keygate.errors import ConfigError
from keygate.limitconf import parse_budget, parse_limits

RPM10 = Rate("k:rpm", 10, 60.0)


def take(c: MemoryCounters, now: float, rate: Rate = RPM10, cost: float = 1.0) -> bool:
    return not isinstance(c.take_now((rate,), (cost,), now), Refused)


def test_no_double_burst_at_a_window_edge() -> None:
    c = MemoryCounters()
    assert sum(take(c, 59.9) for _ in range(20)) == 10  # a full bucket, just before a "minute edge"
    assert sum(take(c, 60.1) for _ in range(20)) == 0  # no fresh window after the edge
    assert sum(take(c, 65.95) for _ in range(20)) == 1  # one every 6 s, smoothly


def test_refusal_changes_nothing_and_says_when() -> None:
    c = MemoryCounters()
    other = Rate("t:rpm", 100, 60.0)
    for _ in range(10):
        c.take_now((RPM10, other), (1, 1), 0.0)
    d = c.take_now((RPM10, other), (1, 1), 0.0)
    assert isinstance(d, Refused) and d.denied == RPM10 and d.retry_after == pytest.approx(6.0)
    assert d.remaining == [0, 90]  # the team counter was not charged for the refused request


def test_adjust_refunds_and_charges_tokens() -> None:
    c = MemoryCounters()
    tpm = Rate("k:tpm", 1000, 60.0, "tokens")
    assert take(c, 0.0, tpm, 1000)
    assert not take(c, 0.0, tpm, 1)
    c.adjust(tpm, -900, 0.0)  # the request used 100, not 1000
    assert take(c, 0.0, tpm, 900)


def test_budget_holds_are_all_or_nothing() -> None:
    c = MemoryCounters()

    async def run() -> None:
        assert await c.reserve(["a", "b"], [10, 100], [6, 6]) is None
        assert await c.reserve(["b", "a"], [100, 10], [6, 6]) == 1  # "a" does not fit: nothing held
        assert await c.available(["a", "b"]) == [(0.0, 6.0), (0.0, 6.0)]
        assert c.settle("a", 6, 2) == (0.0, 2.0)
        assert await c.available(["a"]) == [(2.0, 0.0)]

    asyncio.run(run())


def test_budget_syntax() -> None:
    assert parse_budget("50/month", "x", "budget_usd") == {"amount": 50.0, "period": "month"}
    assert parse_budget("1000000/day", "x", "budget_tokens") == {"amount": 1000000, "period": "day"}
    with pytest.raises(ConfigError, match="period"):
        parse_budget("5/fortnight", "x", "budget_usd")


def test_limits_config_and_prices() -> None:
    limits = parse_limits({"defaults": {"rpm": 60}, "prices": {"my-model": {"input": 1, "output": 2}}})
    assert limits.defaults == {"rpm": 60}
    assert limits.price_for("gpt-4o-2024-08-06") == limits.prices["gpt-4o"]
    assert limits.price_for("gpt-4o-mini-2024-07-18") == limits.prices["gpt-4o-mini"]
    assert limits.price_for("my-model") is not None and limits.price_for("unknown") is None
    with pytest.raises(ConfigError, match=r"limits\.defaults\.rpx"):
        parse_limits({"defaults": {"rpx": 1}})
    with pytest.raises(ConfigError, match=r"limits\.global\.rps"):
        parse_limits({"global": {"rps": -1}})
    with pytest.raises(ConfigError, match="webhook_url"):
        parse_limits({"webhook_url": "ftp://x"})
