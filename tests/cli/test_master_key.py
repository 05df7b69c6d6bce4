"""``keygate master-key`` (``keygate.cli.master_key``): generate a master key file, re-wrap every
stored data key under a new one (resuming after a crash), and report which key wraps what."""

from __future__ import annotations

import json
from pathlib import Path

import openai

from keygate.testing import MockUpstream
from keygate.types import Secret
from keygate.vault import kek_id, parse_master_key

from ..helpers import Gateway, assert_no_secret_written, process_cli

MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
STORED = "sk-proj-STORED-upstream-secret-aaaa1111"
STORED_2 = "sk-proj-STORED-upstream-secret-bbbb2222"
STORED_3 = "sk-proj-STORED-upstream-secret-cccc3333"


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


def test_generate_never_overwrites_and_status_in_text(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    key_file = tmp_path / "new.key"
    made = gw.cli("master-key", "generate", "--out", str(key_file))
    value = key_file.read_text().strip()
    gw.secrets.append(value)
    assert kek_id(parse_master_key(Secret(value))) in made.stdout and value not in made.stdout
    again = gw.cli("master-key", "generate", "--out", str(key_file), check=False)
    assert again.returncode == 1 and "never overwrites" in again.stderr
    assert key_file.read_text().strip() == value
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    current = kek_id(parse_master_key(Secret(MASTER)))
    assert gw.cli("master-key", "status").stdout.splitlines() == [
        f"current master key: {current}",
        f"  {current}: 1 key(s)  (current)",
    ]
    # After a rotation, with the old key as previous: both are listed, the new one is current.
    gw.cli("master-key", "rotate", "--new-key-file", str(key_file))
    gw.env.update(KEYGATE_MASTER_KEY=value, KEYGATE_PREVIOUS_MASTER_KEY=MASTER)
    assert (
        f"{kek_id(parse_master_key(Secret(value)))}: 1 key(s)  (current)"
        in gw.cli("master-key", "status").stdout
    )
    del gw.env["KEYGATE_MASTER_KEY"], gw.env["KEYGATE_PREVIOUS_MASTER_KEY"]
    assert "current master key: (none configured)" in gw.cli("master-key", "status").stdout
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_rotate_refuses_a_new_key_file_others_can_read(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    key_file = tmp_path / "shared.key"
    gw.cli("master-key", "generate", "--out", str(key_file))
    gw.secrets.append(key_file.read_text().strip())
    key_file.chmod(0o644)
    refused = gw.cli("master-key", "rotate", "--new-key-file", str(key_file), check=False)
    assert refused.returncode == 2 and "--new-key-file" in refused.stderr and "chmod 600" in refused.stderr
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    garbage.chmod(0o600)
    bad = gw.cli("master-key", "rotate", "--new-key-file", str(garbage), check=False)
    assert bad.returncode == 2 and "--new-key-file: expected 32 random bytes" in bad.stderr
    current = kek_id(parse_master_key(Secret(MASTER)))
    assert json.loads(gw.cli("master-key", "status", "--json").stdout)["wrapped_by"] == {current: 1}
    assert_no_secret_written(outputs(gw), gw.secrets)
