"""What only the SQLite store does: its file is private, migrations are recorded once, and the
server's shared-memory change detector keeps SQLite's locks. The Store protocol itself is tested
against both stores in test_contract.py."""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path

import openai

from keygate.store import SQLiteStore
from keygate.testing import MockUpstream

from ..helpers import ProcessGateway
from .test_contract import audit, key


def test_migrate_is_idempotent_and_the_file_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keygate.db"
    store = SQLiteStore(path, audit_key=b"t" * 32)
    store.migrate()
    store.insert_key(key(), audit())
    store.migrate()
    assert path.stat().st_mode & 0o777 == 0o600
    db = sqlite3.connect(path)
    names = [r[0] for r in db.execute("SELECT name FROM schema_migrations")]
    db.close()
    assert len(names) == len(set(names)) >= 6
    store.close()
    store.close()  # twice is fine
    reopened = SQLiteStore(path, audit_key=b"t" * 32)
    assert [k.id for k in reopened.list_keys()] == ["key_1"]
    reopened.close()


def test_cli_writes_beside_a_serving_gateway_keep_sqlite_shared_memory_locked(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    # The gateway maps the head of the WAL index (-shm) to notice key changes without a query.
    # Closing a descriptor of that file would drop SQLite's POSIX locks on it, process-wide; a CLI
    # command could then take the -shm for unused and truncate it under the server's mappings
    # (SIGBUS: a crash seen under load during `upstreams rotate`). SQLite's "DMS" lock is byte 128
    # of the -shm (https://www.sqlite.org/walformat.html); while the gateway serves, no other
    # process can take it exclusively.
    with ProcessGateway(tmp_path, upstream.url) as gw:
        client = openai.OpenAI(base_url=gw.url, api_key=gw.create_key("app")["key"], max_retries=0)
        for _ in range(3):
            client.models.list()
            gw.create_key()  # another process commits to the same database
        with open(tmp_path / "keygate.db-shm", "rb+") as shm:
            try:
                fcntl.lockf(shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
            except OSError:
                pass
            else:
                raise AssertionError("the gateway holds no lock on its database's shared memory")
        client.models.list()
        assert gw.proc is not None and gw.proc.poll() is None
