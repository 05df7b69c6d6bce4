"""Budget periods without a server: the ``week`` period's names and ends across a week boundary."""

from __future__ import annotations

import calendar

import pytest

from keygate.limitconf import parse_budget, parse_limits
from keygate.spend import counter_name, period_end, period_key


def utc(text: str) -> float:
    """Seconds since the epoch of a ``YYYY-MM-DD HH:MM:SS`` UTC time."""
    date, clock = text.split()
    y, mo, d = (int(p) for p in date.split("-"))
    h, mi, s = (int(p) for p in clock.split(":"))
    return float(calendar.timegm((y, mo, d, h, mi, s)))


@pytest.mark.parametrize(
    ("sunday_night", "monday_morning", "before", "after"),
    [
        # ISO weeks run Monday to Sunday; the ISO year can differ from the calendar year.
        ("2024-12-29 23:59:59", "2024-12-30 00:00:00", "2024-W52", "2025-W01"),
        ("2021-01-03 23:59:59", "2021-01-04 00:00:00", "2020-W53", "2021-W01"),
        ("2025-08-17 23:59:59", "2025-08-18 00:00:00", "2025-W33", "2025-W34"),
    ],
)
def test_week_period_changes_exactly_at_monday_midnight_utc(
    sunday_night: str, monday_morning: str, before: str, after: str
) -> None:
    last, first = utc(sunday_night), utc(monday_morning)
    assert period_key("week", last) == before
    assert period_key("week", last + 0.999) == before  # fractions of the last second still count
    assert period_key("week", first) == after
    # The whole week shares one name: Monday 00:00 to Sunday 23:59:59.
    assert period_key("week", first + 6 * 86400 + 86399) == after
    assert period_key("week", first - 7 * 86400) == before
    # A budget counter of the new week is a different counter: spend starts again from zero.
    assert counter_name("key:k1", "tokens", "week", last) == f"key:k1|tokens|{before}"
    assert counter_name("key:k1", "tokens", "week", first) == f"key:k1|tokens|{after}"


def test_week_period_end_is_next_monday_midnight() -> None:
    monday = utc("2025-08-18 00:00:00")
    assert period_end("week", monday) == 7 * 86400
    assert period_end("week", monday + 3 * 86400 + 3600) == 4 * 86400 - 3600  # Thursday 01:00
    assert period_end("week", utc("2025-08-24 23:59:59")) == 1  # Sunday's last second
    assert period_end("week", utc("2025-08-24 23:59:59") + 0.5) == 1  # never less than a second


def test_day_and_month_names_around_the_same_boundary() -> None:
    last, first = utc("2024-12-31 23:59:59"), utc("2025-01-01 00:00:00")
    assert (period_key("day", last), period_key("day", first)) == ("2024-12-31", "2025-01-01")
    assert (period_key("month", last), period_key("month", first)) == ("2024-12", "2025-01")
    assert period_key("lifetime", last) == period_key("lifetime", first) == "lifetime"


def test_week_budget_syntax_and_defaults() -> None:
    assert parse_budget("1000/week", "x", "budget_tokens") == {"amount": 1000, "period": "week"}
    assert parse_budget({"amount": 2.5, "period": "week"}, "x", "budget_usd") == {
        "amount": 2.5,
        "period": "week",
    }
    limits = parse_limits(
        {"defaults": {"budget_usd": "20/week"}, "default_price": {"input": 5, "output": 15}}
    )
    assert limits.defaults["budget_usd"] == {"amount": 20.0, "period": "week"}
    # default_price is the fallback for unknown models only; priced models keep their own price.
    unknown = limits.price_for("mystery-model")
    assert unknown is not None and (unknown.input, unknown.output) == (5.0, 15.0)
    assert unknown.cached_input == 5.0  # cached input defaults to the input price
    known = limits.price_for("text-embedding-3-small")
    assert known is not None and known.input == 0.02
    assert parse_limits({}).price_for("mystery-model") is None
