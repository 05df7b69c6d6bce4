"""``keygate audit``: the trail is a keyed hash chain; tampering with the SQLite file directly
(edit, delete, insert, reorder, truncate) is caught by ``audit verify`` (exit 1, naming the entry),
and concurrent writers never fork the chain."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from keygate.config import ensure_pepper
from keygate.ops.audit import Actor
from keygate.store import open_store
from keygate.testing import MockUpstream

from ..helpers import SRC, Gateway, assert_no_secret_written, process_cli


@pytest.fixture
def gw(tmp_path: Path, mock: MockUpstream) -> Iterator[Gateway]:
    export = tmp_path / "audit.jsonl"
    with Gateway(tmp_path, mock.url, extra={"audit": {"export_file": str(export)}}) as gw:
        yield gw


def _seed(gw: Gateway, n: int = 6) -> None:
    for i in range(n):
        gw.create_key(f"k{i}")


def _db(gw: Gateway) -> sqlite3.Connection:
    return sqlite3.connect(gw.workdir / "keygate.db", isolation_level=None)


def _verify(gw: Gateway, *extra: str) -> tuple[int, dict[str, object]]:
    r = gw.cli("audit", "verify", "--json", *extra, check=False)
    return r.returncode, json.loads(r.stdout)


def test_an_untouched_chain_verifies_and_lists(gw: Gateway) -> None:
    _seed(gw, 3)
    gw.cli("teams", "create", "red")
    code, found = _verify(gw)
    assert code == 0 and found["ok"] is True and found["entries"] == 4 and found["problem"] is None
    text = gw.cli("audit", "verify").stdout
    assert text.startswith("audit chain intact: 4 entries")
    listed = json.loads(gw.cli("audit", "--json").stdout)
    assert [e["id"] for e in listed] == [4, 3, 2, 1]
    assert listed[0]["action"] == "teams.create" and listed[0]["actor"].startswith("cli:")
    assert all(len(e["hash"]) == 64 for e in listed)
    only_keys = json.loads(gw.cli("audit", "--json", "--action", "keys.").stdout)
    assert {e["action"] for e in only_keys} == {"keys.create"} and len(only_keys) == 3
    assert json.loads(gw.cli("audit", "--json", "--since", "1h", "--limit", "2").stdout)[0]["id"] == 4
    assert json.loads(gw.cli("audit", "--json", "--actor", "adm_nobody").stdout) == []
    assert json.loads(gw.cli("audit", "list", "--json", "--since", "2999-01-01T00:00:00Z").stdout) == []
    table = gw.cli("audit").stdout.splitlines()
    assert table[0].split()[:3] == ["SEQ", "TIME", "ACTOR"] and len(table) == 5
    # Every entry was exported as it was written, with its chain hash.
    exported = [json.loads(line) for line in (gw.workdir / "audit.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in exported] == [1, 2, 3, 4]
    assert [e["hash"] for e in exported] == [e["hash"] for e in reversed(listed)]


def _edit(db: sqlite3.Connection) -> None:
    db.execute("""UPDATE audit SET details = '{"name":"nothing to see"}' WHERE id = 3""")


def _delete(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM audit WHERE id = 3")


def _delete_and_renumber(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM audit WHERE id = 3")
    for i in range(4, 7):
        db.execute("UPDATE audit SET id = ? WHERE id = ?", (i - 1, i))
    db.execute("UPDATE audit_head SET seq = 5, hash = (SELECT hash FROM audit WHERE id = 5)")


def _insert(db: sqlite3.Connection) -> None:
    # Make room at 3 and slip a forged entry in, copying a real entry's link and hash.
    for i in range(6, 2, -1):
        db.execute("UPDATE audit SET id = ? WHERE id = ?", (i + 1, i))
    db.execute(
        "INSERT INTO audit (id, ts, actor, action, target, origin, details, prev, hash)"
        " SELECT 3, ts, 'adm_forged', 'keys.revoke', 'key_x', origin, '{}', hash, hash FROM audit WHERE id = 2"
    )
    db.execute("UPDATE audit_head SET seq = 7")


def _insert_at_end(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO audit (id, ts, actor, action, target, origin, details, prev, hash)"
        " SELECT 7, ts, 'adm_forged', 'keys.revoke', 'key_x', origin, '{}', hash, hash FROM audit WHERE id = 6"
    )


def _reorder(db: sqlite3.Connection) -> None:
    db.execute("UPDATE audit SET id = -3 WHERE id = 3")
    db.execute("UPDATE audit SET id = 3 WHERE id = 4")
    db.execute("UPDATE audit SET id = 4 WHERE id = -3")


def _truncate_tail(db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM audit WHERE id > 4")


@pytest.mark.parametrize(
    ("tamper", "problem", "seq"),
    [
        (_edit, "altered", 3),
        (_delete, "deleted", 3),
        (_delete_and_renumber, "deleted", 3),
        (_insert, "inserted", 3),
        (_insert_at_end, "inserted", 7),
        (_reorder, "reordered", 3),
        (_truncate_tail, "truncated", 5),
    ],
)
def test_tampering_with_the_database_is_caught(
    gw: Gateway, tamper: Callable[[sqlite3.Connection], None], problem: str, seq: int
) -> None:
    _seed(gw)
    assert _verify(gw)[0] == 0
    with _db(gw) as db:
        tamper(db)
    code, found = _verify(gw)
    assert code == 1 and found["ok"] is False
    assert (found["problem"], found["seq"]) == (problem, seq), found["message"]
    r = gw.cli("audit", "verify", check=False)
    assert r.returncode == 1 and "BROKEN" in r.stderr and f" {seq}" in r.stderr


def test_an_anchor_proves_the_history_before_it_and_catches_a_cut_tail(gw: Gateway) -> None:
    _seed(gw, 4)
    anchor = gw.cli("audit", "anchor").stdout.strip()
    assert anchor.startswith("4:") and len(anchor) == 2 + 64
    assert json.loads(gw.cli("audit", "anchor", "--json").stdout)["anchor"] == anchor
    gw.create_key("later")
    code, found = _verify(gw, "--anchor", anchor)
    assert code == 0 and "anchor entry 4 present" in str(found["message"])
    # The last entries, the anchor's among them, cut off with the head moved back to match: the
    # chain alone looks whole, the anchor says otherwise.
    with _db(gw) as db:
        db.execute("DELETE FROM audit WHERE id >= 4")
        db.execute("UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit WHERE id = 3)")
    assert _verify(gw)[0] == 0  # what no verification without an anchor can see
    code, found = _verify(gw, "--anchor", anchor)
    assert code == 1 and (found["problem"], found["seq"]) == ("truncated", 4)


def test_an_anchor_catches_a_history_rewritten_with_the_key(gw: Gateway) -> None:
    """Someone holding the pepper can recompute the whole chain; an anchor kept elsewhere cannot
    be matched by the rewritten one."""
    _seed(gw, 3)
    anchor = gw.cli("audit", "anchor").stdout.strip()
    from keygate.audit_chain import GENESIS, chain_key, seal

    settings = ensure_pepper(gw.settings())
    key = chain_key(settings.pepper.reveal())
    with _db(gw) as db:
        db.execute("""UPDATE audit SET actor = 'cli:someone-else' WHERE id = 2""")
        prev = GENESIS
        for row in db.execute("SELECT id, ts, actor, origin, action, target, details FROM audit ORDER BY id"):
            digest = seal(key, row[0], prev, *row[1:])
            db.execute("UPDATE audit SET prev = ?, hash = ? WHERE id = ?", (prev, digest, row[0]))
            prev = digest
        db.execute("UPDATE audit_head SET hash = ?", (prev,))
    assert _verify(gw)[0] == 0
    code, found = _verify(gw, "--anchor", anchor)
    assert code == 1 and found["problem"] == "anchor_mismatch" and found["seq"] == 3
    bad = gw.cli("audit", "verify", "--anchor", "3:xyz", check=False)
    assert bad.returncode == 1 and "SEQ:HASH" in bad.stderr


def test_concurrent_writers_never_fork_the_chain(gw: Gateway) -> None:
    """Threads with their own store connections, the running gateway's admin API, and a CLI
    process, all at once: one gapless chain."""
    settings = ensure_pepper(gw.settings())
    token = json.loads(gw.cli("admin-tokens", "create", "--role", "admin", "--json").stdout)["token"]
    errors: list[BaseException] = []

    def store_writer(n: int) -> None:
        store = open_store(settings)
        try:
            actor = Actor(f"thread:{n}", "test")
            for i in range(15):
                store.write_audit(actor.record("test.concurrent", f"t{n}-{i}"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    def api_writer() -> None:
        try:
            with httpx.Client(base_url=gw.admin_url, headers={"authorization": f"Bearer {token}"}) as c:
                for i in range(10):
                    assert c.post("/admin/teams", json={"name": f"team{i}"}).status_code == 201
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=store_writer, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=api_writer))
    for t in threads:
        t.start()
    procs = [process_cli(gw, "keys", "create", "--name", f"proc{i}") for i in range(3)]
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert all(p.returncode == 0 for p in procs)
    code, found = _verify(gw)
    assert code == 0, found["message"]
    total = 1 + 3 * 15 + 10 + 3
    assert found["entries"] == total and found["head"]["seq"] == total  # type: ignore[index]
    with _db(gw) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM audit ORDER BY id")]
    assert ids == list(range(1, total + 1))


def test_entries_written_before_the_chain_are_chained_by_the_migration(tmp_path: Path) -> None:
    """A database from before the chain: its entries are chained when the migration runs."""
    from keygate.config import load_settings
    from keygate.store.sqlite import _MIGRATIONS

    db_path = tmp_path / "keygate.db"
    (tmp_path / "keygate.yaml").write_text("database_url: sqlite:///keygate.db\n")
    old = sqlite3.connect(db_path, isolation_level=None)
    old.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    for name, script in _MIGRATIONS:
        if name == "0005_audit_chain":
            break
        for statement in script.split(";"):
            if statement.strip():
                old.execute(statement)
        old.execute("INSERT INTO schema_migrations VALUES (?, 0)", (name,))
    for i in (1, 2, 5):  # ids with a gap, as an older version may have left them
        old.execute(
            "INSERT INTO audit (id, ts, actor, action, target, origin, details) VALUES (?, ?, 'cli:old', ?, ?, 'x', '{}')",
            (i, 1.0 + i, "keys.create", f"key_{i}"),
        )
    old.close()
    settings = ensure_pepper(load_settings(tmp_path / "keygate.yaml", {}))
    store = open_store(settings)
    try:
        store.write_audit(Actor("cli:new", "x").record("keys.revoke", "key_1"))
        assert store.audit_head()[0] == 4 and store.audit_head()[2] == 1
        assert [e.target for e in store.list_audit()] == ["key_1", "key_5", "key_2", "key_1"]
    finally:
        store.close()
    from keygate.cli import main

    assert main(["--config", str(tmp_path / "keygate.yaml"), "audit", "verify"], {}) == 0


def test_the_admin_api_and_a_remote_cli_list_verify_and_anchor(gw: Gateway) -> None:
    _seed(gw, 2)
    token = json.loads(gw.cli("admin-tokens", "create", "--role", "auditor", "--json").stdout)["token"]
    with httpx.Client(base_url=gw.admin_url, headers={"authorization": f"Bearer {token}"}) as api:
        listed = api.get("/admin/audit", params={"action": "keys.", "since": "1h"}).json()
        assert [e["action"] for e in listed] == ["keys.create", "keys.create"]
        assert api.get("/admin/audit", params={"actor": "nobody"}).json() == []
        assert api.get("/admin/audit", params={"since": "next tuesday"}).status_code == 400
        anchor = api.get("/admin/audit/anchor").json()
        assert anchor["seq"] == 3 and anchor["anchor"] == f"3:{anchor['hash']}"
        assert api.get("/admin/audit/verify", params={"anchor": anchor["anchor"]}).json()["ok"] is True
        assert api.get("/admin/audit/verify", params={"anchor": "3:nothex"}).status_code == 400
        env = {**gw.env, "KEYGATE_ADMIN_TOKEN": token}
        remote = process_cli_env(gw, env, "--admin-url", gw.admin_url, "audit", "anchor")
        assert remote.stdout.strip() == anchor["anchor"]
        with _db(gw) as db:
            _edit_first(db)
        found = api.get("/admin/audit/verify").json()
        assert (found["ok"], found["problem"], found["seq"]) == (False, "altered", 1)
        remote = process_cli_env(gw, env, "--admin-url", gw.admin_url, "audit", "verify")
        assert remote.returncode == 1 and "entry 1" in remote.stderr
    # No secret in anything written: the database, the export, every command's output.
    files = [gw.workdir / n for n in ("keygate.db", "audit.jsonl", "cli-output.log", "stderr.log")]
    assert_no_secret_written(files, [*gw.secrets, token])


def _edit_first(db: sqlite3.Connection) -> None:
    db.execute("UPDATE audit SET actor = 'cli:nobody' WHERE id = 1")


def process_cli_env(gw: Gateway, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keygate", *args],
        cwd=gw.workdir,
        env={**env, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
