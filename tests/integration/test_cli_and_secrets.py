"""The operator's CLI, usage records, and the promise that no secret is written anywhere."""

from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from pathlib import Path

import httpx
import openai

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET, Gateway, ProcessGateway, assert_no_secret_written


def test_keys_create_list_revoke(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    created = gw.create_key("billing-app")
    assert created["key"].startswith("kg_") and created["id"].startswith("key_")
    plain = gw.cli("keys", "create", "--name", "human")
    assert "kg_" in plain.stdout and "cannot show it again" in plain.stderr
    listed = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert [k["name"] for k in listed] == ["billing-app", "human"]
    first = listed[0]
    assert first["hint"] == "kg_..." + created["key"][-4:]
    assert first["status"] == "active" and first["last_used_at"] is None
    assert "key" not in first and created["key"] not in gw.cli("keys", "list").stdout
    table = gw.cli("keys", "list").stdout
    assert table.splitlines()[0].split() == [
        "ID",
        "NAME",
        "HINT",
        "CREATED",
        "LAST",
        "USED",
        "STATUS",
        "UPSTREAM",
        "POLICY",
    ]
    gw.cli("keys", "revoke", created["id"])
    assert json.loads(gw.cli("keys", "list", "--json").stdout)[0]["status"] == "revoked"
    missing = gw.cli("keys", "revoke", "key_nope", check=False)
    assert missing.returncode == 1 and "no key" in missing.stderr


def test_usage_is_recorded_and_summarised(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url) as gw:
        key = gw.create_key("app")
        other = gw.create_key("other")
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "two words"}]
            )
        for _ in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "two words"}], stream=True
        ):
            pass
        openai.OpenAI(base_url=gw.url, api_key=other["key"], max_retries=0).models.list()
        last_request = time.time()
    # A clean shutdown flushed everything; the CLI reads it from the database.
    usage = {u["key_id"]: u for u in json.loads(gw.cli("usage", "--json").stdout)}
    assert usage[key["id"]]["requests"] == 4
    assert usage[key["id"]]["prompt_tokens"] == 8 and usage[key["id"]]["completion_tokens"] == 12
    assert usage[other["id"]]["requests"] == 1
    only = json.loads(gw.cli("usage", "--key", other["id"], "--json").stdout)
    assert [u["key_id"] for u in only] == [other["id"]]
    rows = (
        sqlite3.connect(tmp_path / "keygate.db")
        .execute(
            "SELECT route, model, status, prompt_tokens, completion_tokens, client_ip, latency_ms, stream, ts"
            " FROM usage WHERE key_id = ? ORDER BY id",
            (key["id"],),
        )
        .fetchall()
    )
    assert [r[:6] for r in rows] == [("chat.completions", "gpt-4o", 200, 2, 3, "127.0.0.1")] * 4
    assert [r[7] for r in rows] == [0, 0, 0, 1]
    assert all(r[6] > 0 and r[8] <= last_request for r in rows)
    listed = {k["id"]: k for k in json.loads(gw.cli("keys", "list", "--json").stdout)}
    assert listed[key["id"]]["last_used_at"] is not None
    lines = gw.access_log.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["client_ip"] == "127.0.0.1" for line in lines)


def test_no_secret_is_written_anywhere(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    """Traffic with known secrets, including failures that echo them; then grep every file."""
    gw = ProcessGateway(tmp_path, upstream.url, extra={"access_log": "-"})
    with gw:
        key = gw.create_key("leaky")["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        for _ in client.chat.completions.create(model="gpt-4o", messages=[], stream=True):
            pass
        mock.fail_next("401")
        r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 502 and UPSTREAM_SECRET not in r.text and key not in r.text
        mock.fail_next("500")
        httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"})
        # Wrong keys of every shape: they must not be logged either.
        wrong = ["kg_" + "Z" * 38, "sk-proj-wrongWRONGwrong123456", "not-a-key-at-all-9f8e7d6c5b4a"]
        gw.secrets.extend(wrong)
        for w in wrong:
            r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {w}"})
            assert r.status_code == 401 and w not in r.text
        httpx.get(f"{gw.base}/{key}", headers={"Authorization": f"Bearer {key}"})
        httpx.post(
            f"{gw.url}/chat/completions",
            content=b"{" + key.encode(),
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        )
        gw.cli("keys", "list")
        gw.cli("usage")
    pepper = (tmp_path / "keygate.pepper").read_text().strip()
    written = [p for p in gw.written_files() if p.name != "keygate.pepper"]
    assert any(p.name == "stdout.log" and p.stat().st_size > 0 for p in written)
    assert any(p.name == "keygate.db" for p in written)
    assert_no_secret_written(written, [*gw.secrets, pepper])


def test_teams_and_key_updates(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    team = json.loads(gw.cli("teams", "create", "research", "--json").stdout)
    assert team["id"].startswith("team_") and team["name"] == "research"
    dup = gw.cli("teams", "create", "research", check=False)
    assert dup.returncode == 1 and "exists" in dup.stderr
    key = gw.create_key("notebook", "--team", "research")
    assert key["team_id"] == team["id"]
    updated = json.loads(
        gw.cli("keys", "update", key["id"], "--name", "laptop", "--team", "", "--json").stdout
    )
    assert updated["name"] == "laptop" and updated["team_id"] is None
    assert gw.cli("keys", "update", "key_missing", "--name", "x", check=False).returncode == 1
    assert [t["name"] for t in json.loads(gw.cli("teams", "list", "--json").stdout)] == ["research"]
    audit = (
        sqlite3.connect(tmp_path / "keygate.db")
        .execute("SELECT actor, action, target, origin FROM audit")
        .fetchall()
    )
    assert [a[1] for a in audit] == ["teams.create", "keys.create", "keys.update"]
    assert all(a[0].startswith("cli:") and a[3].startswith("cli@") for a in audit)


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
