"""keygate.recorder in process, with a real SQLite store: batched writes off the request path, a
failed write kept for the next attempt, everything flushed at close, one access-log line per row."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from keygate.recorder import Recorder, access_line
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream
from keygate.types import UsageRow

from .helpers import ProcessGateway


def row(i: int, **changes: Any) -> UsageRow:
    values: dict[str, Any] = {
        "ts": 1801353600.0 + i + 0.25,
        "request_id": f"kg-test-{i}",
        "key_id": "key_1",
        "route": "chat.completions",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "gpt-4o",
        "status": 200,
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "cached_tokens": 1,
        "latency_ms": 12.5,
        "client_ip": "127.0.0.1",
        "upstream": "openai",
        "stream": False,
    }
    values.update(changes)
    return UsageRow(**values)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "kg.db", audit_key=b"t" * 32)
    s.migrate()
    yield s
    s.close()


def stored(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "kg.db") as db:
        return [r[0] for r in db.execute("SELECT request_id FROM usage ORDER BY ts")]


def logged(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_access_line() -> None:
    line = access_line(row(0, error_code="rate_limited", ts=1801353600.0078))
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    entry = json.loads(line)
    assert list(entry)[:3] == ["time", "ts", "request_id"]
    assert entry["time"] == "2027-01-31T00:00:00.007Z"
    assert entry["error_code"] == "rate_limited" and entry["stream"] is False and entry["prompt_tokens"] == 3


def test_rows_are_batched_off_the_request_path(tmp_path: Path, store: SQLiteStore) -> None:
    log = tmp_path / "access.log"

    async def go() -> None:
        rec = Recorder(store, str(log), flush_interval=0.02)
        await rec.start()
        for i in range(3):
            rec.record(row(i))
        assert rec.pending and stored(tmp_path) == []  # recording only appends
        for _ in range(200):
            if not rec.pending and len(logged(log)) == 3:
                break
            await asyncio.sleep(0.01)
        assert stored(tmp_path) == ["kg-test-0", "kg-test-1", "kg-test-2"]  # one background flush
        rec.record(row(3))
        await rec.close()

    asyncio.run(go())
    assert stored(tmp_path)[-1] == "kg-test-3"  # close flushed the last one
    assert [e["request_id"] for e in logged(log)] == [f"kg-test-{i}" for i in range(4)]
    assert log.stat().st_mode & 0o777 == 0o600
    summary = store.usage_summary("key_1")
    assert summary and summary[0].requests == 4


def test_a_failed_write_keeps_its_rows_for_the_next_attempt(
    tmp_path: Path, store: SQLiteStore, records: list[logging.LogRecord]
) -> None:
    log = tmp_path / "access.log"
    other = sqlite3.connect(tmp_path / "kg.db", isolation_level=None)

    async def go() -> None:
        rec = Recorder(store, str(log), flush_interval=60)
        rec.record(row(0))
        rec.record(row(1))
        other.execute("ALTER TABLE usage RENAME TO usage_away")  # the next write fails
        await rec.flush()
        assert rec.pending
        assert logged(log) == []  # nothing is logged before it is stored
        rec.record(row(2))
        other.execute("ALTER TABLE usage_away RENAME TO usage")
        await rec.flush()
        assert not rec.pending
        await rec.close()

    asyncio.run(go())
    other.close()
    assert stored(tmp_path) == ["kg-test-0", "kg-test-1", "kg-test-2"]
    assert [e["request_id"] for e in logged(log)] == ["kg-test-0", "kg-test-1", "kg-test-2"]  # once each
    failed = [r for r in records if r.getMessage() == "usage flush failed; will retry"]
    assert [getattr(r, "rows", None) for r in failed] == [2]


def test_close_retries_then_gives_up_loudly(
    tmp_path: Path, store: SQLiteStore, records: list[logging.LogRecord]
) -> None:
    other = sqlite3.connect(tmp_path / "kg.db", isolation_level=None)
    other.execute("ALTER TABLE usage RENAME TO usage_away")

    async def go() -> Recorder:
        rec = Recorder(store, str(tmp_path / "access.log"), flush_interval=60)
        rec.record(row(0))
        await rec.close()
        return rec

    rec = asyncio.run(go())
    other.close()
    assert rec.pending  # still held: close does not pretend
    assert len([r for r in records if r.getMessage() == "usage flush failed; will retry"]) == 3
    assert any(r.getMessage() == "buffered records could not be written at shutdown" for r in records)


def test_the_access_log_on_stdout(
    store: SQLiteStore, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    async def go() -> None:
        rec = Recorder(store, "-", flush_interval=60)
        rec.record(row(0))
        await rec.close()

    asyncio.run(go())
    out = capsysbinary.readouterr().out
    assert json.loads(out)["request_id"] == "kg-test-0"
    assert stored(tmp_path) == ["kg-test-0"]


def test_an_access_log_that_cannot_be_written_loses_no_row(
    tmp_path: Path, store: SQLiteStore, records: list[logging.LogRecord]
) -> None:
    """The store is the record of truth: a broken access log is logged, and neither stops the
    rows from being stored nor makes close() fail (which would stop the server's shutdown short)."""
    log = tmp_path / "access.log"
    os.mkfifo(log)
    reader = os.open(log, os.O_RDONLY | os.O_NONBLOCK)

    async def go() -> None:
        rec = Recorder(store, str(log), flush_interval=60)
        os.close(reader)  # the log's reader goes away: every write now fails
        rec.record(row(0))
        await rec.flush()
        assert not rec.pending
        rec.record(row(1))
        await rec.close()

    asyncio.run(go())
    assert stored(tmp_path) == ["kg-test-0", "kg-test-1"]
    assert any(r.getMessage() == "access log write failed" for r in records)


def test_sighup_reopens_the_access_log_after_logrotate_moved_it(tmp_path: Path, mock: MockUpstream) -> None:
    """A real `keygate serve` process: the log renamed (as logrotate does), SIGHUP, and the next
    request's line lands in a new file at the configured path, none in the moved one."""
    with ProcessGateway(tmp_path, mock.url) as gw:
        key = gw.create_key("rotated")["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "1"}])
        assert len(gw.access_entries(at_least=1)) == 1
        moved = tmp_path / "access.log.1"
        gw.access_log.rename(moved)
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not gw.access_log.exists() and time.monotonic() < deadline:
            # Each request's line goes to the moved file until the writer reopens (its next batch).
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "2"}])
            time.sleep(0.1)
        before = gw.access_entries(at_least=1)
        moved_size = moved.stat().st_size
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "3"}])
        fresh = gw.access_entries(at_least=len(before) + 1)
        assert len(fresh) == len(before) + 1 and all(e["status"] == 200 for e in fresh)
        assert moved.stat().st_size == moved_size  # the old file gets nothing more
        assert oct(gw.access_log.stat().st_mode & 0o777) == "0o600"
        old = [json.loads(line) for line in moved.read_text().splitlines()]
        assert len(old) >= 1
        assert {e["request_id"] for e in old}.isdisjoint(e["request_id"] for e in fresh)
        assert gw.proc.poll() is None  # still serving


def test_the_buffer_is_bounded_and_drops_the_oldest_loudly(
    tmp_path: Path, store: SQLiteStore, records: list[logging.LogRecord]
) -> None:
    other = sqlite3.connect(tmp_path / "kg.db", isolation_level=None)

    async def go() -> Recorder:
        rec = Recorder(store, str(tmp_path / "access.log"), flush_interval=60, max_pending=5)
        other.execute("ALTER TABLE usage RENAME TO usage_away")  # the database is away
        for i in range(4):
            rec.record(row(i))
        await rec.flush()
        for i in range(4, 8):
            rec.record(row(i))
        await rec.flush()  # 8 kept would exceed 5: the 3 oldest go
        assert rec.dropped == 3
        other.execute("ALTER TABLE usage_away RENAME TO usage")
        await rec.flush()
        await rec.close()
        return rec

    rec = asyncio.run(go())
    other.close()
    assert stored(tmp_path) == [f"kg-test-{i}" for i in range(3, 8)] and not rec.pending
    full = [r for r in records if r.getMessage() == "write-behind buffer full: oldest records dropped"]
    assert [(r.levelno, getattr(r, "dropped_now", None)) for r in full] == [(logging.ERROR, 3)]
    assert any(r.getMessage() == "write-behind buffer written again after failures" for r in records)


def test_close_while_the_timer_flush_waits_for_the_writer_loses_nothing(
    tmp_path: Path, store: SQLiteStore
) -> None:
    # The timer's flush has taken its batch and waits for the writer thread (busy with an earlier
    # batch) when close() comes: that batch is still written, not dropped with the timer.
    gate, writing = threading.Event(), threading.Event()
    write = store.write_usage

    def slow_first_write(rows: list[UsageRow]) -> None:
        if not writing.is_set():
            writing.set()
            gate.wait(5)
        write(rows)

    store.write_usage = slow_first_write  # type: ignore[method-assign]

    async def go() -> None:
        rec = Recorder(store, str(tmp_path / "access.log"), flush_interval=0.01)
        rec.record(row(0))
        first = asyncio.ensure_future(rec.flush())  # takes row 0; the writer blocks on the gate
        while not writing.is_set():
            await asyncio.sleep(0.005)
        await rec.start()
        rec.record(row(1))
        while rec.pending:  # the timer's flush has taken row 1 and waits behind row 0
            await asyncio.sleep(0.005)
        threading.Timer(0.1, gate.set).start()
        await rec.close()
        await first

    asyncio.run(go())
    assert stored(tmp_path) == ["kg-test-0", "kg-test-1"]
