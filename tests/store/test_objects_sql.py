"""keygate.store.objects_sql: ownership records, on SQLite and, with the very same SQL, on
PostgreSQL (the mixin run over a psycopg connection that only translates ``?`` placeholders)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from keygate.store import ObjectChange, SQLiteStore
from keygate.store.objects_sql import PG_MIGRATION, ObjectsMixin
from keygate.types import AuditRecord


class _Cursor:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]


class PGObjects(ObjectsMixin):
    """The mixin on PostgreSQL: what the PostgreSQL store will do with it."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._pg = conn

    def _conn(self) -> Any:
        return _Cursor(self._pg)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._pg.transaction():
            yield _Cursor(self._pg)


@pytest.fixture
def pg() -> Iterator[PGObjects]:
    name = "kg_objects_" + secrets.token_hex(4)
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={name}", autocommit=True) as conn:
            conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            conn.execute(
                "CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION, actor TEXT,"
                " action TEXT, target TEXT, origin TEXT, details TEXT)"
            )
            for statement in PG_MIGRATION[1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            yield PGObjects(conn)
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "k.db")
    store.migrate()
    yield store
    store.close()


@pytest.mark.parametrize("which", ["lite", "pg"])
def test_records_revisions_and_tombstones(which: str, request: pytest.FixtureRequest) -> None:
    store: Any = request.getfixturevalue(which)
    audit = AuditRecord(time.time(), "test", "local", "objects.assign", "file-2")
    assert store.objects_rev() == 0 and store.objects_since(0) == (0, [])
    store.write_objects(
        [
            ObjectChange("file-1", "file", "key_a", 1.0, {"summary": {"lines": 2}}),
            ObjectChange("batch_1", "batch", "key_a", 2.0),
        ]
    )
    assert store.objects_rev() == 1
    before = store.set_object_owner("file-2", "file", "key_b", 3.0, audit)
    assert before is None
    assert [r.id for r in store.list_objects()] == ["file-2", "batch_1", "file-1"]
    assert [r.id for r in store.list_objects("key_a", "file")] == ["file-1"]
    rev, rows = store.objects_since(1)
    assert rev == 2 and [r.id for r in rows] == ["file-2"]
    store.write_objects([ObjectChange("file-1", "file", None, 4.0)])  # deleted through keygate
    row = store.get_object("file-1")
    assert row.key_id is None and row.kind == "deleted" and row.meta == {"summary": {"lines": 2}}
    rev, rows = store.objects_since(2)
    assert rev == 3 and [(r.id, r.key_id) for r in rows] == [("file-1", None)]
    assert "file-1" not in [r.id for r in store.list_objects()]
    store.write_objects([ObjectChange("batch_1", "batch", "key_a", 5.0, {"settled": True})])
    assert store.get_object("batch_1").meta == {"settled": True}
