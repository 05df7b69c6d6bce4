"""Every store against the Store protocol, the same tests for SQLite and PostgreSQL: every change
commits with its audit entry or not at all, change detection across store instances, grace
secrets, upstream key rows, spend and usage.

The PostgreSQL runs share one database per module (random name, dropped after), emptied before
each test (tests/postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from keygate.ops.audit import Actor
from keygate.store import AdminToken, SQLiteStore, Store, UpstreamDef, UpstreamKeyRow
from keygate.store.postgres import PostgresStore
from keygate.types import AuditRecord, KeyRecord, Team, UsageRow
from keygate.vault import Keyring, Sealed

from .. import postgres as pg

ACTOR = Actor("adm_test", "127.0.0.1")
RING = Keyring(b"k" * 32)


@dataclass
class Backend:
    """One kind of store, and how a test looks at its database from outside."""

    kind: str
    make: Callable[[], Store]  # another store instance on the same database
    snapshot: Callable[[], dict[str, list[tuple[Any, ...]]]]
    raw: Callable[[str], object]  # one statement by a plain client of the database
    refuse_audit_sql: str
    refused: type[Exception]
    integrity: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)

    def count_audit(self) -> int:
        return len(self.snapshot()["audit"])


def _sqlite_raw(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    try:
        db.executescript(sql)
        db.commit()
    finally:
        db.close()


@pytest.fixture(scope="module")
def pg_db() -> Iterator[str]:
    with pg.database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "keygate.db"

        def make_sqlite() -> Store:
            s = SQLiteStore(path, audit_key=b"t" * 32)
            s.migrate()
            return s

        return Backend(
            "sqlite",
            make_sqlite,
            lambda: snapshot(path),
            lambda sql: _sqlite_raw(path, sql),
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'no audit'); END",
            sqlite3.IntegrityError,
        )
    url = request.getfixturevalue("pg_db")

    def make_pg() -> Store:
        s = PostgresStore(url, audit_key=b"t" * 32)
        s.migrate()
        return s

    make_pg().close()
    pg.truncate(url)
    return Backend(
        "postgresql",
        make_pg,
        lambda: pg.snapshot(url),
        lambda sql: pg.execute(url, sql),
        "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'no audit'; END $$;"
        " CREATE TRIGGER refuse_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        psycopg.errors.RaiseException,
    )


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = backend.make()
    yield s
    s.close()


def changed_soon(store: Store, within: float = 1.0) -> bool:
    """keys_changed() turned True within ``within`` seconds (another PostgreSQL store's change
    arrives by notification, a few milliseconds after its commit; SQLite's at once)."""
    deadline = time.monotonic() + within
    while not store.keys_changed():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def audit(action: str = "test", target: str = "t", **details: Any) -> AuditRecord:
    return ACTOR.record(action, target, **details)


def key(key_id: str = "key_1", key_hash: str = "h1", **kw: Any) -> KeyRecord:
    return KeyRecord(id=key_id, name=kw.pop("name", key_id), key_hash=key_hash, hint="kg_...abcd",
                     created_at=kw.pop("created_at", 100.0), **kw)  # fmt: skip


def upstream_key(key_id: str, upstream: str = "openai", created_at: float = 1.0) -> UpstreamKeyRow:
    secret = f"sk-{key_id}-secret"
    sealed = RING.seal(upstream, key_id, secret)
    return UpstreamKeyRow(key_id, upstream, secret[-4:], "sha256:x", created_at, None, "active", None, sealed)


def usage_row(
    key_id: str | None, ts: float, status: int = 200, prompt: int = 1, completion: int = 2
) -> UsageRow:
    return UsageRow(ts, "req", key_id, "chat.completions", "POST", "/v1/chat/completions", "gpt-4o", status,
                    prompt, completion, 0, 1.5, "127.0.0.1", "openai", False)  # fmt: skip


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read by a connection of its own."""
    db = sqlite3.connect(path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}  # noqa: S608
    finally:
        db.close()


def seeded(store: Store) -> None:
    """A key, a team, an admin token, an upstream definition and two keys, one of them retiring."""
    store.insert_key(key("key_1", "h1"), audit("keys.create", "key_1"))
    store.insert_team(Team("team_1", "red", 1.0, {}), audit("teams.create", "team_1"))
    token = AdminToken("adm_1", "ops", "th1", "kga_...wxyz", "admin", 1.0)
    store.insert_admin_token(token, audit("admin_tokens.create", "adm_1"))
    store.put_upstream_def(UpstreamDef("beta", "https://beta.example/v1", False, None, None, 1.0), audit())
    store.insert_upstream_key(upstream_key("uk_1"), audit("upstreams.add", "uk_1"))
    store.insert_upstream_key(
        upstream_key("uk_2", created_at=2.0), audit("upstreams.rotate"), retire_others_at=5e9
    )


# Every method that changes what an operator manages, with the audit record it writes.
MUTATIONS: dict[str, Callable[[Store, AuditRecord], object]] = {
    "insert_key": lambda s, a: s.insert_key(key("key_2", "h2"), a),
    "update_key": lambda s, a: s.update_key("key_1", {"name": "renamed", "policy": {"rpm": 1}}, a),
    "revoke_key": lambda s, a: s.revoke_key("key_1", 2.0, a),
    "rotate_key_secret": lambda s, a: s.rotate_key_secret("key_1", "h9", "kg_...9999", 9e9, {"x": 1}, a),
    "insert_team": lambda s, a: s.insert_team(Team("team_2", "blue", 2.0, {}), a),
    "update_team": lambda s, a: s.update_team("team_1", {"rpm": 5}, a),
    "insert_admin_token": lambda s, a: s.insert_admin_token(
        AdminToken("adm_2", "ci", "th2", "kga_...0000", "auditor", 2.0), a
    ),
    "revoke_admin_token": lambda s, a: s.revoke_admin_token("adm_1", 2.0, a),
    "put_upstream_def": lambda s, a: s.put_upstream_def(
        UpstreamDef("gamma", "https://gamma.example/v1", False, None, None, 2.0), a
    ),
    "insert_upstream_key": lambda s, a: s.insert_upstream_key(upstream_key("uk_3"), a, retire_others_at=9.0),
    "retire_upstream_key": lambda s, a: s.retire_upstream_key("openai", "uk_2", 3.0, a),
    "enable_upstream_key": lambda s, a: s.enable_upstream_key("openai", "uk_1", 3.0, a),
    "write_audit": lambda s, a: s.write_audit(a),
}


@pytest.mark.parametrize("method", sorted(MUTATIONS))
def test_every_change_writes_one_audit_entry_with_it(store: Store, backend: Backend, method: str) -> None:
    seeded(store)
    before = backend.count_audit()
    MUTATIONS[method](store, audit(method, "target", n=1))
    (entry, *_) = store.list_audit(1)
    assert backend.count_audit() == before + 1
    assert (entry.action, entry.target, entry.actor, entry.origin, entry.details) == (
        method, "target", "adm_test", "127.0.0.1", {"n": 1}
    )  # fmt: skip


@pytest.mark.parametrize("method", sorted(MUTATIONS))
def test_a_failing_audit_insert_leaves_neither_the_change_nor_the_entry(
    store: Store, backend: Backend, method: str
) -> None:
    seeded(store)
    backend.raw(backend.refuse_audit_sql)
    before = backend.snapshot()
    with pytest.raises(backend.refused, match="no audit"):
        MUTATIONS[method](store, audit(method))
    assert backend.snapshot() == before
    # The store is still usable: the transaction was rolled back, not left open.
    assert store.get_key("key_1") is not None and store.list_audit(1)[0].action == "upstreams.rotate"


@pytest.mark.parametrize("method", sorted(MUTATIONS))
def test_details_that_cannot_be_stored_leave_nothing_written(
    store: Store, backend: Backend, method: str
) -> None:
    seeded(store)
    before = backend.snapshot()
    unstorable = AuditRecord(1.0, "adm_test", "127.0.0.1", method, "t", '{"name": "\ud800"}')
    with pytest.raises(UnicodeEncodeError):
        MUTATIONS[method](store, unstorable)
    assert backend.snapshot() == before


def test_changes_that_find_nothing_write_no_audit_entry(store: Store, backend: Backend) -> None:
    seeded(store)
    before = backend.snapshot()
    assert store.update_key("key_missing", {"name": "x"}, audit()) is None
    assert store.update_team("team_missing", {}, audit()) is None
    assert store.rotate_key_secret("key_missing", "h", "kg_...h", 1.0, {}, audit()) is False
    assert store.revoke_admin_token("adm_missing", 1.0, audit()) is False
    assert store.retire_upstream_key("beta", "uk_1", 1.0, audit()) is False  # uk_1 is openai's
    assert store.revoke_key("key_1", 2.0, audit("keys.revoke")) is True
    after_revoke = backend.count_audit()
    assert store.revoke_key("key_1", 3.0, audit("keys.revoke")) is False
    assert store.revoke_admin_token("adm_1", 2.0, audit()) is True
    assert store.revoke_admin_token("adm_1", 3.0, audit()) is False
    assert backend.count_audit() == after_revoke + 1
    assert len(before["audit"]) + 2 == backend.count_audit()
    with pytest.raises(ValueError, match="key_hash"):
        store.update_key("key_1", {"key_hash": "mine now"}, audit())


def test_keys_changed_notices_every_writer_of_key_and_team_records(store: Store, backend: Backend) -> None:
    assert store.keys_changed() is True  # the first look
    assert store.keys_changed() is False
    writer = backend.make()
    try:
        writer.insert_key(key("key_1", "h1"), audit())
        assert changed_soon(store) and store.keys_changed() is False
        # Commits that change no key or team record do not count.
        writer.write_usage([usage_row("key_1", 5.0)])
        writer.write_audit(audit())
        writer.save_spend([("key:key_1|usd|lifetime", 1.0, 0.0)], 5.0)
        assert store.keys_changed() is False
        for change in (
            lambda: writer.insert_team(Team("team_1", "red", 1.0, {}), audit()),
            lambda: writer.update_team("team_1", {"rpm": 1}, audit()),
            lambda: writer.update_key("key_1", {"team_id": "team_1"}, audit()),
            lambda: writer.rotate_key_secret("key_1", "h2", "kg_...2", 9.0, {}, audit()),
            lambda: writer.revoke_key("key_1", 6.0, audit()),
        ):
            change()
            assert changed_soon(store) and store.keys_changed() is False
        # A commit from another thread of this store, and one of this connection itself.
        done = threading.Thread(target=lambda: store.insert_key(key("key_2", "h7"), audit()))
        done.start()
        done.join()
        assert store.get_key("key_2") is not None and store.keys_changed() is True
        store.insert_key(key("key_3", "h8"), audit())
        assert store.keys_changed() is True and store.keys_changed() is False
        # A plain client's commit to an unrelated row moves the WAL index (SQLite), not keys_rev.
        backend.raw("INSERT INTO meta (k, v) VALUES ('other', '1')")
        assert changed_soon(store, within=0.05) is False
    finally:
        writer.close()


def test_keys_teams_and_lookups(store: Store, backend: Backend) -> None:
    store.insert_team(Team("team_1", "red", 1.0, {"rpm": 3}), audit())
    store.insert_key(key("key_b", "hb", created_at=2.0, team_id="team_1", upstream="beta",
                         metadata={"owner": "ana"}, policy={"models": ["gpt-4o"]}), audit())  # fmt: skip
    store.insert_key(key("key_a", "ha", created_at=1.0), audit())
    assert [k.id for k in store.list_keys()] == ["key_a", "key_b"]  # oldest first
    got = store.get_key("key_b")
    assert got is not None and (got.team_id, got.upstream, got.metadata, got.policy) == (
        "team_1", "beta", {"owner": "ana"}, {"models": ["gpt-4o"]}
    )  # fmt: skip
    assert store.get_team("team_1") == store.get_team("red") == Team("team_1", "red", 1.0, {"rpm": 3})
    assert store.get_team("blue") is None and store.get_key("key_z") is None
    updated = store.update_key("key_b", {"metadata": {"owner": "bo"}, "team_id": None}, audit())
    assert updated is not None and updated.metadata == {"owner": "bo"} and updated.team_id is None
    with pytest.raises(backend.integrity):
        store.insert_team(Team("team_2", "red", 2.0, {}), audit())  # names are unique
    with pytest.raises(backend.integrity):
        store.insert_key(key("key_c", "ha"), audit())  # so are hashes
    assert [t.id for t in store.list_teams()] == ["team_1"]


def test_grace_secrets(store: Store) -> None:
    store.insert_key(key("key_1", "old"), audit())
    assert list(store.list_grace_secrets(0.0)) == []
    assert store.rotate_key_secret("key_1", "new", "kg_...new1", 100.0, {"rotated_at": "x"}, audit()) is True
    record = store.get_key("key_1")
    assert record is not None and (record.key_hash, record.hint, record.policy) == (
        "new", "kg_...new1", {"rotated_at": "x"}
    )  # fmt: skip
    assert list(store.list_grace_secrets(99.0)) == [("old", "key_1", 100.0)]
    assert list(store.list_grace_secrets(100.0)) == []  # the grace period is over
    store.rotate_key_secret("key_1", "newer", "kg_...nwr2", 200.0, {}, audit())
    assert sorted(store.list_grace_secrets(50.0)) == [("new", "key_1", 200.0), ("old", "key_1", 100.0)]


def test_admin_tokens_and_the_audit_trail(store: Store) -> None:
    token = AdminToken("adm_1", "ops", "th1", "kga_...wxyz", "admin", 1.0)
    store.insert_admin_token(token, audit("admin_tokens.create", "adm_1"))
    assert store.admin_token_by_hash("th1") == store.get_admin_token("adm_1") == token
    assert store.admin_token_by_hash("nope") is None and store.get_admin_token("nope") is None
    store.revoke_admin_token("adm_1", 5.0, audit("admin_tokens.revoke", "adm_1"))
    (revoked,) = store.list_admin_tokens()
    assert (revoked.status, revoked.revoked_at, revoked.active) == ("revoked", 5.0, False)
    store.write_audit(AuditRecord(9.0, "a", "o", "odd", "t", "not json"))
    store.write_audit(AuditRecord(9.0, "a", "o", "odd", "t", "[1, 2]"))
    newest = store.list_audit(2)
    assert [e.details for e in newest] == [{"value": [1, 2]}, {"raw": "not json"}]
    assert [e.id for e in store.list_audit()] == sorted((e.id for e in store.list_audit()), reverse=True)
    assert [e.action for e in store.list_audit(10, "admin_tokens.revoke")] == ["admin_tokens.revoke"]
    assert store.list_audit(10, "nothing") == []


def test_upstream_definitions_and_key_rows(store: Store) -> None:
    rev = store.upstreams_rev()
    beta = UpstreamDef("beta", "https://beta.example/v1", True, "openai", "/ca.pem", 1.0)
    store.put_upstream_def(beta, audit())
    assert store.list_upstream_defs() == [beta] and store.upstreams_rev() != rev
    store.put_upstream_def(UpstreamDef("beta", "https://b2.example/v1", False, None, None, 1.0), audit())
    assert [d.base_url for d in store.list_upstream_defs()] == ["https://b2.example/v1"]

    store.insert_upstream_key(upstream_key("uk_1", created_at=1.0), audit())
    store.insert_upstream_key(upstream_key("uk_b", "beta", created_at=2.0), audit())
    store.insert_upstream_key(upstream_key("uk_2", created_at=3.0), audit(), retire_others_at=50.0)
    rows = {r.id: r for r in store.list_upstream_keys()}
    assert [r.id for r in store.list_upstream_keys("openai")] == ["uk_1", "uk_2"]
    assert (rows["uk_1"].status, rows["uk_1"].retire_at) == ("retiring", 50.0)
    assert (rows["uk_b"].status, rows["uk_2"].status) == ("active", "active")  # other upstreams untouched
    assert (
        rows["uk_1"].effective_status(49.0) == "retiring" and rows["uk_1"].effective_status(50.0) == "retired"
    )
    sealed = rows["uk_2"].sealed
    assert sealed is not None and RING.open("openai", "uk_2", sealed).reveal() == "sk-uk_2-secret"
    assert store.count_sealed_upstream_keys() == 3

    rev = store.upstreams_rev()
    assert store.sweep_retired_keys(49.0) == 0 and store.upstreams_rev() == rev
    assert store.sweep_retired_keys(50.0) == 1 and store.upstreams_rev() != rev
    swept = {r.id: r for r in store.list_upstream_keys()}["uk_1"]
    assert (swept.status, swept.sealed) == ("retired", None)  # the material is wiped
    assert store.count_sealed_upstream_keys() == 2
    assert store.retire_upstream_key("openai", "uk_1", 60.0, audit()) is False  # retired already
    assert store.retire_upstream_key("openai", "uk_2", 60.0, audit()) is True
    assert store.count_sealed_upstream_keys() == 1

    store.touch_upstream_keys({})
    store.touch_upstream_keys({"uk_b": 10.0})
    store.touch_upstream_keys({"uk_b": 5.0})  # never moves back
    assert {r.id: r.last_used_at for r in store.list_upstream_keys("beta")} == {"uk_b": 10.0}

    store.enable_upstream_key("openai", "openai#0", 70.0, audit())
    store.enable_upstream_key("openai", "openai#0", 80.0, audit())
    assert store.upstream_key_enables() == {"openai#0": 80.0}


def test_rewrap_only_replaces_a_row_still_wrapped_by_the_old_key(store: Store) -> None:
    store.insert_upstream_key(upstream_key("uk_1"), audit())
    (row,) = store.list_upstream_keys()
    assert row.sealed is not None
    new_ring = Keyring(b"n" * 32, b"k" * 32)
    rewrapped = new_ring.rewrap("openai", "uk_1", row.sealed)
    assert store.rewrap_upstream_key("uk_1", "mk_not_this_one", rewrapped) is False
    assert store.rewrap_upstream_key("uk_1", row.sealed.kek_id, rewrapped) is True
    assert store.rewrap_upstream_key("uk_1", row.sealed.kek_id, rewrapped) is False  # done already
    (after,) = store.list_upstream_keys()
    assert after.sealed == Sealed(new_ring.current_id, rewrapped.wrapped_key, row.sealed.ciphertext)
    assert Keyring(b"n" * 32).open("openai", "uk_1", after.sealed).reveal() == "sk-uk_1-secret"


def test_spend_and_usage(store: Store) -> None:
    assert store.load_spend() == {}
    store.save_spend([("a", 1.0, 0.5), ("b", 2.0, 0.0)], 1.0)
    store.save_spend([("a", 3.0, 0.0)], 2.0)
    assert store.load_spend() == {"a": (3.0, 0.0), "b": (2.0, 0.0)}

    store.insert_key(key("key_1", "h1"), audit())
    store.write_usage([])
    store.write_usage([
        usage_row("key_1", 10.0), usage_row("key_1", 20.0, status=429, prompt=0, completion=0),
        usage_row("key_1", 15.0, prompt=5, completion=7), usage_row(None, 12.0, status=401, prompt=0, completion=0),
    ])  # fmt: skip
    by_key = {s.key_id: s for s in store.usage_summary()}
    mine = by_key["key_1"]
    assert (mine.requests, mine.errors, mine.prompt_tokens, mine.completion_tokens, mine.total_tokens) == (
        3, 1, 6, 9, 15
    )  # fmt: skip
    assert (mine.first_ts, mine.last_ts) == (10.0, 20.0)
    assert (by_key[None].requests, by_key[None].errors) == (1, 1)
    assert [s.key_id for s in store.usage_summary("key_1")] == ["key_1"]
    late = store.usage_summary("key_1", since=15.0)
    assert [(s.requests, s.prompt_tokens) for s in late] == [(2, 5)]
    assert store.usage_summary("key_other") == []
    record = store.get_key("key_1")
    assert record is not None and record.last_used_at == 15.0  # the 429 does not count as a use
