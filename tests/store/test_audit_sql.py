"""The audit chain's SQL: export after commit (SQLite), and PostgreSQL 15 (the running server at
127.0.0.1:5432, in a database of this test's own): its migration, and concurrent writers on
separate connections that never fork the chain (the head row's lock serialises them)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from keygate.audit_chain import chain_key, verify
from keygate.store.audit_sql import PG_MIGRATION, AuditMixin
from keygate.types import AuditRecord

KEY = chain_key("pepper-for-the-postgres-test-0123456789")
# The audit table as the core schema has it (ids given by the chain, not by a sequence).
CORE = """CREATE TABLE audit (id BIGINT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, origin TEXT NOT NULL, details TEXT NOT NULL)"""


class _Translating:
    """``?`` placeholders as psycopg's ``%s`` (what the PostgreSQL store does)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Any = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), args)


class PGAudit(AuditMixin):
    def __init__(self, dsn: str) -> None:
        self.audit_key = KEY
        self.raw = psycopg.connect(dsn)
        self.wrapped = _Translating(self.raw)

    def _conn(self) -> Any:
        return self.wrapped

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        try:
            yield self.wrapped
        except BaseException:
            self.raw.rollback()
            raise
        self.raw.commit()


@pytest.fixture
def dsn() -> Iterator[str]:
    name = "kg_audit_" + secrets.token_hex(6)
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"host=127.0.0.1 user=postgres dbname={name}"
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_concurrent_writers_on_postgresql_keep_one_chain(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(CORE)
        conn.execute(
            "INSERT INTO audit VALUES (1, 1.5, 'cli:old', 'keys.create', 'key_1', 'x', '{}')"
        )  # an entry from before the chain
        for statement in PG_MIGRATION[1].split(";"):
            if statement.strip():
                conn.execute(statement)
        store = PGAudit(dsn)
        assert store.chain_existing_audit(_Translating(conn)) == 1
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        mine = PGAudit(dsn)
        try:
            for i in range(40):
                mine.write_audit(AuditRecord(time.time(), f"t{n}", "test", "test.write", f"{n}-{i}"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            mine.raw.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    seq, digest, start = store.audit_head()
    rows = store.audit_chain_rows()
    assert (seq, start, [r.seq for r in rows]) == (161, 1, list(range(1, 162)))
    assert verify(rows, KEY, (seq, digest)).ok
    assert [e.target for e in store.list_audit(2, "test.", actor="t0", since=0.0)] == ["0-39", "0-38"]
    store.raw.close()


def test_entries_are_exported_once_committed_and_a_failed_export_fails_nothing(tmp_path: Any) -> None:
    from keygate.store import AuditEntry, SQLiteStore
    from keygate.types import Team

    store = SQLiteStore(tmp_path / "k.db", audit_key=KEY)
    store.migrate()
    seen: list[AuditEntry] = []
    store.audit_export = seen.append
    team = Team("team_1", "red", 1.0, {})
    store.insert_team(team, AuditRecord(1.0, "cli:me", "x", "teams.create", "team_1"))
    with pytest.raises(Exception, match="UNIQUE"):  # rolled back: its entry is neither kept nor exported
        store.insert_team(team, AuditRecord(2.0, "cli:me", "x", "teams.create", "team_1"))
    assert [(e.id, e.action) for e in seen] == [(1, "teams.create")]

    def broken(entry: AuditEntry) -> None:
        raise OSError("disk full")

    store.audit_export = broken
    store.write_audit(AuditRecord(3.0, "cli:me", "x", "test.export", "t"))  # no error: it is stored
    assert [e.id for e in store.list_audit()] == [2, 1] and store.audit_head()[0] == 2
    store.close()
    without_key = SQLiteStore(tmp_path / "k.db")
    with pytest.raises(RuntimeError, match="audit chain key"):
        without_key.write_audit(AuditRecord(4.0, "cli:me", "x", "test.nokey", "t"))
    without_key.close()
