"""Budget periods and counter names, which budgets apply, spend persistence (SpendBook on the real
SQLite store) and the soft-threshold webhook (Notifier against a real receiver on loopback)."""

from __future__ import annotations

import asyncio
import calendar
import math
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from keygate.counters import MemoryCounters
from keygate.spend import (
    Notifier,
    SpendBook,
    budgets_of,
    counter_name,
    period_bounds,
    period_end,
    period_key,
)
from keygate.store import SQLiteStore
from keygate.testing import key_record
from keygate.types import Team

from .guards.common import Hook, logged


def utc(text: str) -> float:
    """Seconds since the epoch of a ``YYYY-MM-DD HH:MM:SS`` UTC time."""
    date, clock = text.split()
    y, mo, d = (int(p) for p in date.split("-"))
    h, mi, s = (int(p) for p in clock.split(":"))
    return float(calendar.timegm((y, mo, d, h, mi, s)))


# -- periods and counter names -------------------------------------------------------------------


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


def test_day_month_and_lifetime_period_ends() -> None:
    assert period_end("day", utc("2025-08-18 18:00:00")) == 6 * 3600
    assert period_end("month", utc("2024-02-28 00:00:00")) == 2 * 86400  # a leap February
    assert period_end("month", utc("2025-02-28 00:00:00")) == 86400
    assert period_end("month", utc("2025-12-31 12:00:00")) == 12 * 3600  # into the next year
    assert period_end("lifetime", utc("2025-08-18 18:00:00")) == 6 * 3600  # a day's polite hint


def test_day_and_month_names_around_the_same_boundary() -> None:
    last, first = utc("2024-12-31 23:59:59"), utc("2025-01-01 00:00:00")
    assert (period_key("day", last), period_key("day", first)) == ("2024-12-31", "2025-01-01")
    assert (period_key("month", last), period_key("month", first)) == ("2024-12", "2025-01")
    assert period_key("lifetime", last) == period_key("lifetime", first) == "lifetime"
    assert counter_name("team:t1", "usd", "lifetime", last) == "team:t1|usd|lifetime"


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


# -- which budgets apply -------------------------------------------------------------------------


def test_budgets_of_a_key_its_team_and_the_defaults() -> None:
    defaults = {"budget_usd": {"amount": 5, "period": "month"}, "rpm": 10}
    key = key_record("k1", {"budget_tokens": {"amount": 1000, "period": "day"}}, name="app")
    team = Team("t1", "crew", 0.0, {"budget_usd": {"amount": 50.0, "period": "week"}})
    found = [(b.scope, b.label, b.kind, b.amount, b.period) for b in budgets_of(key, team, defaults)]
    assert found == [
        ("key:k1", "app", "usd", 5.0, "month"),  # the default, for the key only
        ("key:k1", "app", "tokens", 1000.0, "day"),
        ("team:t1", "crew", "usd", 50.0, "week"),
    ]
    # The key's own budget replaces the default of the same kind; a period defaults to lifetime.
    own = key_record("k2", {"budget_usd": {"amount": 2}})
    (b,) = budgets_of(own, None, defaults)
    assert (b.kind, b.amount, b.period) == ("usd", 2.0, "lifetime")


def test_budgets_of_ignores_entries_that_are_not_budgets() -> None:
    key = key_record(
        "k3",
        {"budget_usd": "5/day", "budget_tokens": {"amount": "lots"}, "models": ["gpt-4o"]},
    )
    assert budgets_of(key, None, {}) == []
    assert budgets_of(key_record("k4"), Team("t", "t", 0.0), {"rpm": 5}) == []


# -- SpendBook: persistence on the real store ----------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    found = SQLiteStore(tmp_path / "spend.db", audit_key=b"t" * 32)
    found.migrate()
    yield found
    found.close()


class FlakyStore:
    """The real store, whose next ``fail`` spend writes fail (a locked or full disk)."""

    def __init__(self, inner: SQLiteStore, fail: int) -> None:
        self.inner = inner
        self.fail = fail
        self.writes: list[list[str]] = []

    def load_spend(self) -> dict[str, tuple[float, float]]:
        return self.inner.load_spend()

    def save_spend(self, rows: Sequence[tuple[str, float, float]], ts: float) -> None:
        self.writes.append([name for name, _, _ in rows])
        if self.fail > 0:
            self.fail -= 1
            raise sqlite3.OperationalError("database is locked")
        self.inner.save_spend(rows, ts)


def test_spend_touched_after_a_flush_is_written_by_the_next_one(store: SQLiteStore) -> None:
    counters = MemoryCounters()
    recording = FlakyStore(store, fail=0)
    book = SpendBook(counters, recording, 60.0)

    async def run() -> None:
        counters.settle("a", 0.0, 1.5)
        book.touch("a")
        assert book.pending
        await book.flush()
        assert not book.pending
        counters.reserve_now(["b"], [10.0], [4.0])
        book.touch("b")
        book.touch("b")
        await book.flush()
        await book.flush()  # nothing changed: nothing written
        await book.close()

    asyncio.run(run())
    assert recording.writes == [["a"], ["b"]]
    assert store.load_spend() == {"a": (1.5, 0.0), "b": (0.0, 4.0)}  # absolute (spent, held) values


def test_load_counts_holds_of_a_crashed_run_as_spent(store: SQLiteStore) -> None:
    store.save_spend([("key:k|usd|lifetime", 2.0, 3.0), ("key:k|tokens|2025-08-18", 10.0, 0.0)], 0.0)
    counters = MemoryCounters()
    with logged("keygate.budget") as records:
        SpendBook(counters, store, 60.0).load()
    assert counters.snapshot_now(["key:k|usd|lifetime", "key:k|tokens|2025-08-18"]) == {
        "key:k|usd|lifetime": (5.0, 0.0),  # spent + what was held when the last run died
        "key:k|tokens|2025-08-18": (10.0, 0.0),
    }
    # Written back as spent, so a second crash cannot count the same hold twice.
    assert store.load_spend() == {"key:k|usd|lifetime": (5.0, 0.0), "key:k|tokens|2025-08-18": (10.0, 0.0)}
    assert [r.getMessage() for r in records] == ["unfinished holds counted as spent"]
    assert records[0].counters == 1  # type: ignore[attr-defined]
    again = MemoryCounters()
    with logged("keygate.budget") as records:
        SpendBook(again, store, 60.0).load()
    assert again.snapshot_now(["key:k|usd|lifetime"]) == {"key:k|usd|lifetime": (5.0, 0.0)} and records == []


def test_a_failed_flush_is_retried_by_the_next_one(store: SQLiteStore) -> None:
    counters = MemoryCounters()
    flaky = FlakyStore(store, fail=1)
    book = SpendBook(counters, flaky, 60.0)

    async def run() -> None:
        counters.settle("a", 0.0, 1.0)
        book.touch("a")
        with logged("keygate.budget") as records:
            await book.flush()
        assert [r.getMessage() for r in records] == ["spend flush failed; will retry"]
        assert book.pending and store.load_spend() == {}
        counters.settle("a", 0.0, 1.0)  # changed again meanwhile: the retry writes the latest
        await book.flush()
        assert not book.pending
        await book.close()

    asyncio.run(run())
    assert flaky.writes == [["a"], ["a"]]
    assert store.load_spend() == {"a": (2.0, 0.0)}


def test_spend_is_written_in_the_background_and_at_close(store: SQLiteStore) -> None:
    counters = MemoryCounters()
    book = SpendBook(counters, store, 0.01)

    async def run() -> None:
        await book.start()
        counters.settle("a", 0.0, 1.0)
        book.touch("a")
        deadline = time.monotonic() + 5
        while store.load_spend() != {"a": (1.0, 0.0)}:
            assert time.monotonic() < deadline, "the background flush never wrote"
            await asyncio.sleep(0.01)
        counters.settle("b", 0.0, 2.0)
        book.touch("b")
        await book.close()  # the timer stops; what is left is written

    asyncio.run(run())
    assert store.load_spend() == {"a": (1.0, 0.0), "b": (2.0, 0.0)}


def test_without_a_store_nothing_is_pending_or_written() -> None:
    counters = MemoryCounters()
    counters.settle("a", 0.0, 1.0)
    book = SpendBook(counters, None, 60.0)

    async def run() -> None:
        await book.start()
        book.touch("a")
        assert not book.pending
        await book.flush()
        await book.close()

    asyncio.run(run())
    assert counters.snapshot_now(["a"]) == {"a": (1.0, 0.0)}


# -- Notifier: the soft-threshold webhook --------------------------------------------------------


@pytest.fixture
def hook() -> Iterator[Hook]:
    found = Hook()
    yield found
    found.close()


async def _wait(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_notice_is_logged_and_posted_as_json(hook: Hook) -> None:
    notifier = Notifier(hook.url)
    payload = {"event": "budget.soft_threshold", "id": "k1", "spent": 0.8}

    async def run() -> None:
        await notifier.start()
        with logged("keygate.budget") as records:
            notifier.send(payload)
            await _wait(lambda: hook.received)
        await notifier.stop()
        assert [r.getMessage() for r in records] == ["budget soft threshold reached"]
        assert records[0].budget_notice == payload  # type: ignore[attr-defined]

    asyncio.run(run())
    assert hook.received == [payload]
    assert hook.headers[0]["content-type"] == "application/json"


def test_a_failing_webhook_is_only_logged(hook: Hook) -> None:
    hook.status = 500
    notifier = Notifier(hook.url)

    async def run() -> list[object]:
        await notifier.start()
        with logged("keygate.budget") as records:
            notifier.send({"id": "k1"})
            await _wait(lambda: any(r.getMessage() == "budget webhook failed" for r in records))
        await notifier.stop()
        return [getattr(r, "status", None) for r in records if r.getMessage() == "budget webhook failed"]

    assert asyncio.run(run()) == [500]
    assert hook.received == [{"id": "k1"}]


def test_an_unreachable_webhook_is_only_logged() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = Notifier(f"http://127.0.0.1:{port}/hook")

    async def run() -> list[object]:
        await notifier.start()
        with logged("keygate.budget") as records:
            notifier.send({"id": "k1"})
            await _wait(lambda: any(r.getMessage() == "budget webhook failed" for r in records))
        await notifier.stop()
        return [getattr(r, "error", None) for r in records if r.getMessage() == "budget webhook failed"]

    assert asyncio.run(run()) == ["ConnectError"]


def test_without_a_url_the_notice_is_only_logged() -> None:
    notifier = Notifier(None)

    async def run() -> None:
        await notifier.start()
        with logged("keygate.budget") as records:
            notifier.send({"id": "k1"})
        assert [r.getMessage() for r in records] == ["budget soft threshold reached"]
        await notifier.stop()

    asyncio.run(run())


def test_stop_cancels_a_notice_still_being_sent() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        notifier = Notifier(f"http://127.0.0.1:{silent.getsockname()[1]}/hook")

        async def run() -> float:
            await notifier.start()
            notifier.send({"id": "k1"})
            await asyncio.sleep(0.05)  # the POST is waiting for an answer (up to its 5 s timeout)
            started = time.monotonic()
            await notifier.stop()
            return time.monotonic() - started

        assert asyncio.run(run()) < 2.0
