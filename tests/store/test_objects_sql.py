"""keygate.store.objects_sql: ownership records, on SQLite and, with the very same SQL, on
PostgreSQL (both stores mix it in)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keygate.store import ObjectChange, SQLiteStore
from keygate.store.postgres import PostgresStore
from keygate.types import AuditRecord

from .. import postgres

KEY = b"t" * 32  # the audit chain key of these stores


@pytest.fixture
def pg() -> Iterator[PostgresStore]:
    with postgres.database() as url:
        store = PostgresStore(url, audit_key=KEY)
        store.migrate()
        yield store
        store.close()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "k.db", audit_key=KEY)
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
