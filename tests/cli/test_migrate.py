"""``keygate migrate``: the schema applied on its own, and a populated SQLite store copied into
PostgreSQL through the real CLI, then served from PostgreSQL by a real gateway."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from keygate.store import pg_schema
from keygate.store.postgres import PostgresStore
from keygate.testing import MockUpstream

from .. import postgres as pg
from ..helpers import SRC, UPSTREAM_SECRET, Gateway

KEY = b"t" * 32  # the audit chain key of stores the tests open themselves

STORED_SECRET = "sk-stored-beta-key-0123456789abcdefghij"


def _count(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
    finally:
        db.close()


def test_a_populated_sqlite_store_moves_to_postgresql_and_keeps_working(
    tmp_path: Path, mock: MockUpstream, pg_url: str, shared_secrets: dict[str, str]
) -> None:
    mock.set_api_keys([UPSTREAM_SECRET, STORED_SECRET])
    old = Gateway(tmp_path / "old", mock.url, env=shared_secrets)
    # Made before the gateway starts, so it loads the stored upstream at once.
    old.cli("teams", "create", "red")
    old.cli("upstreams", "add", "beta", "--base-url", mock.url, "--key-stdin", input=STORED_SECRET)
    keys = [old.create_key(f"app{i}", *(["--team", "red"] if i == 0 else [])) for i in range(3)]
    pinned = old.create_key("pinned", "--upstream", "beta")
    revoked = old.create_key("gone")
    with old:
        for k in (*keys, pinned, revoked):
            openai.OpenAI(base_url=old.url, api_key=k["key"], max_retries=0).models.list()
        old.cli("keys", "revoke", revoked["id"])
        old.wait_entry(lambda e: True)
    db = tmp_path / "old" / "keygate.db"
    usage_rows, audit_rows = _count(db, "usage"), _count(db, "audit")
    assert usage_rows == 5 and audit_rows >= 7

    source = f"sqlite:///{db}"
    first = old.cli("migrate", "--from", source, "--to", pg_url, "--json")
    copied = json.loads(first.stdout)["copied"]
    assert (copied["keys"], copied["teams"], copied["upstream_keys"], copied["usage"]) == (5, 1, 1, 5)
    before = pg.snapshot(pg_url)
    again = old.cli("migrate", "--from", source, "--to", pg_url)
    assert "Nothing to copy" in again.stdout
    assert pg.snapshot(pg_url) == before  # the second run changed nothing

    store = PostgresStore(pg_url, audit_key=KEY)
    try:
        assert len(store.list_keys()) == 5
        (sealed,) = [r for r in store.list_upstream_keys() if r.sealed is not None]
        assert sealed.sealed is not None and STORED_SECRET[-4:] == sealed.last4
        assert sum(s.requests for s in store.usage_summary()) == usage_rows
        entries = store.list_audit(1000)
        assert len(entries) == audit_rows + 1 and entries[0].action == "migrate.copy"
        assert entries[0].details["copied"]["usage"] == usage_rows
    finally:
        store.close()

    mock.reset()
    mock.set_api_keys([UPSTREAM_SECRET, STORED_SECRET])
    new = Gateway(tmp_path / "new", mock.url, extra=pg.on_postgres(pg_url), env=shared_secrets)
    with new:
        for k in (*keys, pinned):
            openai.OpenAI(base_url=new.url, api_key=k["key"], max_retries=0).models.list()
        # The pinned key went to "beta", whose only key is the stored one: it opened.
        assert STORED_SECRET in {r.headers.get("authorization", "")[7:] for r in mock.requests}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=new.url, api_key=revoked["key"], max_retries=0).models.list()
        # The new requests' rows join the copied ones (written in batches: wait for the flush).
        want = usage_rows + len(keys) + 2  # + the pinned key's and the revoked key's requests
        deadline = time.monotonic() + 5
        while sum(u["requests"] for u in json.loads(new.cli("usage", "--json").stdout)) != want:
            assert time.monotonic() < deadline, "the new usage rows were not written"
            time.sleep(0.02)


def test_a_target_with_rows_of_its_own_is_refused_unless_asked(
    tmp_path: Path, mock: MockUpstream, pg_url: str, shared_secrets: dict[str, str]
) -> None:
    on_pg = Gateway(tmp_path / "pg", mock.url, extra=pg.on_postgres(pg_url), env=shared_secrets)
    on_pg.create_key("mine")
    assert "up to date" in on_pg.cli("migrate").stdout
    old = Gateway(tmp_path / "old", mock.url, env=shared_secrets)
    old.create_key("theirs")
    source = f"sqlite:///{tmp_path / 'old' / 'keygate.db'}"
    refused = old.cli("migrate", "--from", source, "--to", pg_url, check=False)
    assert refused.returncode == 1 and "--into-non-empty" in refused.stderr and "keys" in refused.stderr
    old.cli("migrate", "--from", source, "--to", pg_url, "--into-non-empty")
    names = sorted(k["name"] for k in json.loads(on_pg.cli("keys", "list", "--json").stdout))
    assert names == ["mine", "theirs"]


def test_urls_are_checked_and_never_take_a_literal_password(tmp_path: Path, mock: MockUpstream) -> None:
    gw = Gateway(tmp_path, mock.url)
    bad = gw.cli("migrate", "--from", "sqlite:///x.db", "--to", "postgresql://u:hunter2@h/db", check=False)
    assert bad.returncode == 2 and "no literal password" in bad.stderr and "hunter2" not in bad.stderr
    alone = gw.cli("migrate", "--from", "sqlite:///x.db", check=False)
    assert alone.returncode == 1 and "--from and --to go together" in alone.stderr


def test_several_processes_migrating_one_fresh_database_at_once_take_turns(
    tmp_path: Path, mock: MockUpstream, shared_secrets: dict[str, str]
) -> None:
    """Four `keygate migrate` processes started together on an empty database (as instances
    starting at once do): the advisory lock makes them take turns, every one succeeds, and each
    migration is applied once."""
    with pg.database() as fresh:
        gw = Gateway(tmp_path, mock.url, extra=pg.on_postgres(fresh), env=shared_secrets)
        command = [sys.executable, "-m", "keygate", "--config", str(gw.config_path), "migrate"]
        env = {**gw.env, "PYTHONPATH": SRC}
        procs = [
            subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        results = [(p.wait(60), p.stderr.read() if p.stderr else b"") for p in procs]
        for p in procs:
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
        assert [code for code, _ in results] == [0, 0, 0, 0], results
        names = [r[0] for r in pg.execute(fresh, "SELECT name FROM schema_migrations")]
        assert sorted(names) == sorted(n for n, _ in pg_schema.PG_MIGRATIONS)  # each once
