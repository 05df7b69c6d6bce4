"""Stored upstream keys: encrypted at rest, write-only, master key handling and rotation."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import openai

from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written, process_cli

MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
STORED = "sk-proj-STORED-upstream-secret-aaaa1111"
STORED_2 = "sk-proj-STORED-upstream-secret-bbbb2222"
STORED_3 = "sk-proj-STORED-upstream-secret-cccc3333"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def db_gateway(tmp_path: Path, url: str, **extra: object) -> Gateway:
    """A gateway whose upstream has no config key: its keys come from the database."""
    config = {"upstreams": {"openai": {"base_url": url, "api_keys": []}}, **extra}
    gw = Gateway(tmp_path, url, extra=config, env={"KEYGATE_MASTER_KEY": MASTER})
    gw.secrets += [MASTER, STORED, STORED_2, STORED_3]
    return gw


def outputs(gw: Gateway) -> list[Path]:
    """Every file the gateway and CLI wrote, except the master key files themselves."""
    return [p for p in gw.written_files() if p.suffix != ".key"]


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def bearer_of(mock: MockUpstream) -> list[str]:
    return [r.headers.get("authorization", "")[7:] for r in mock.requests]


def test_stored_key_is_sealed_write_only_and_used(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([STORED])
    gw = db_gateway(tmp_path, mock.url)
    added = gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    assert "...1111" in added.stdout and STORED not in added.stdout
    with gw:
        key = gw.create_key("app")["key"]
        reply = sdk(gw, key).chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert reply.choices[0].message.content
    assert bearer_of(mock) == [STORED]
    listed = json.loads(gw.cli("upstreams", "list", "--json").stdout)
    (row,) = [v for v in listed if v["source"] == "store"]
    assert row["last4"] == "1111" and row["fingerprint"].startswith("sha256:")
    assert row["status"] == "active" and row["created_at"] and row["last_used_at"]
    table = gw.cli("upstreams", "list").stdout
    assert "1111" in table and STORED not in table
    # The ciphertext is bound to its row: a secret never appears in the database in any form.
    db = sqlite3.connect(tmp_path / "keygate.db")
    (kek, wrapped, ct) = db.execute("SELECT kek_id, wrapped_key, ciphertext FROM upstream_keys").fetchone()
    assert kek.startswith("mk_") and len(wrapped) == 12 + 32 + 16 and STORED.encode() not in ct
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_key_is_never_taken_from_argv(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    result = gw.cli("upstreams", "add", "openai", STORED, check=False)
    assert result.returncode == 2  # argparse: no positional secret exists
    result = gw.cli("upstreams", "add", "openai", input="", check=False)
    assert result.returncode == 1 and "--key-stdin" in result.stderr
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_swapped_rows_fail_to_decrypt(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED_2 + "\n")
    db = sqlite3.connect(tmp_path / "keygate.db", isolation_level=None)
    (a, wa, ca), (b, wb, cb) = db.execute(
        "SELECT id, wrapped_key, ciphertext FROM upstream_keys ORDER BY created_at"
    ).fetchall()
    db.execute("UPDATE upstream_keys SET wrapped_key = ?, ciphertext = ? WHERE id = ?", (wb, cb, a))
    db.execute("UPDATE upstream_keys SET wrapped_key = ?, ciphertext = ? WHERE id = ?", (wa, ca, b))
    db.close()
    proc = subprocess.run(
        [sys.executable, "-m", "keygate", "--config", str(gw.config_path), "serve"],
        env=gw.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "does not open" in proc.stderr
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_refuses_to_start_without_master_key(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    env = {k: v for k, v in gw.env.items() if k != "KEYGATE_MASTER_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "keygate", "--config", str(gw.config_path), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "no master key is configured" in proc.stderr
    # Storing needs the master key too.
    add = subprocess.run(
        [
            sys.executable,
            "-m",
            "keygate",
            "--config",
            str(gw.config_path),
            "upstreams",
            "add",
            "openai",
            "--key-stdin",
        ],
        env=env,
        input=STORED_2 + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert add.returncode == 2 and "master key" in add.stderr
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_master_key_file_must_be_private(tmp_path: Path, mock: MockUpstream) -> None:
    key_file = tmp_path / "master.key"
    gw = Gateway(
        tmp_path,
        mock.url,
        extra={
            "master_key_file": str(key_file),
            "upstreams": {"openai": {"base_url": mock.url, "api_keys": []}},
        },
    )
    gw.cli("master-key", "generate", "--out", str(key_file))
    assert key_file.stat().st_mode & 0o777 == 0o600
    gw.secrets.append(key_file.read_text().strip())
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    key_file.chmod(0o640)
    result = gw.cli("upstreams", "list", check=False)
    assert result.returncode == 2 and "chmod 600" in result.stderr and "master_key_file" in result.stderr
    key_file.chmod(0o600)
    mock.set_api_keys([STORED])
    with gw:
        assert sdk(gw, gw.create_key()["key"]).models.list().data
    gw.secrets.append(STORED)
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_master_key_rotation_resumes_after_a_crash(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    for secret in (STORED, STORED_2, STORED_3):
        gw.cli("upstreams", "add", "openai", "--key-stdin", input=secret + "\n")
    new_file = tmp_path / "new.key"
    gw.cli("master-key", "generate", "--out", str(new_file))
    new_master = new_file.read_text().strip()
    gw.secrets.append(new_master)
    before = json.loads(gw.cli("master-key", "status", "--json").stdout)
    old_id = before["current"]
    assert before["wrapped_by"] == {old_id: 3}

    # A crash (SIGKILL) after the first row: nothing half-written, some rows re-wrapped.
    crashed = process_cli(gw, "master-key", "rotate", "--new-key-file", str(new_file), "--crash-after", "1")
    assert crashed.returncode == -9
    mid = json.loads(gw.cli("master-key", "status", "--json").stdout)["wrapped_by"]
    assert mid[old_id] == 2 and sum(mid.values()) == 3

    resumed = gw.cli("master-key", "rotate", "--new-key-file", str(new_file))
    assert "(2/2)" in resumed.stdout and "All 3 stored key(s)" in resumed.stdout
    again = gw.cli("master-key", "rotate", "--new-key-file", str(new_file))
    assert "0 re-wrapped" in again.stdout

    # Only the new master key now: every stored key still opens, and the gateway serves with them.
    gw.env["KEYGATE_MASTER_KEY"] = new_master
    status = json.loads(gw.cli("master-key", "status", "--json").stdout)
    assert list(status["wrapped_by"]) == [status["current"]] and status["current"] != old_id
    mock.set_api_keys([STORED, STORED_2, STORED_3])
    with gw:
        client = sdk(gw, gw.create_key()["key"])
        for _ in range(3):
            client.models.list()
    assert sorted(bearer_of(mock)) == [STORED, STORED_2, STORED_3]
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_serving_gateway_survives_master_key_rotation(tmp_path: Path, mock: MockUpstream) -> None:
    """Re-wrapping does not touch ciphertexts; the running gateway keeps its decrypted keys."""
    gw = db_gateway(tmp_path, mock.url, key_refresh_interval=0.05)
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    mock.set_api_keys([STORED])
    new_file = tmp_path / "new.key"
    gw.cli("master-key", "generate", "--out", str(new_file))
    gw.secrets.append(new_file.read_text().strip())
    with gw:
        client = sdk(gw, gw.create_key()["key"])
        client.models.list()
        gw.cli("master-key", "rotate", "--new-key-file", str(new_file))
        for _ in range(3):
            client.models.list()
    assert bearer_of(mock) == [STORED] * 4
    assert "cannot open" not in gw.stderr_path.read_text()
    assert_no_secret_written(outputs(gw), gw.secrets)
