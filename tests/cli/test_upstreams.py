"""``keygate upstreams`` (``keygate.cli.upstreams``): store upstream keys encrypted, write-only, from
stdin or a hidden prompt (never argv); list, rotate, retire and re-enable them."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from keygate.cli import main
from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written

MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
STORED = "sk-proj-STORED-upstream-secret-aaaa1111"
STORED_2 = "sk-proj-STORED-upstream-secret-bbbb2222"
K1 = "sk-proj-PIN-key-one-1111111111111111111"
K2 = "sk-proj-PIN-key-two-2222222222222222222"
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def db_gateway(tmp_path: Path, url: str, **extra: object) -> Gateway:
    """A gateway whose upstream has no config key: its keys come from the database."""
    config = {"upstreams": {"openai": {"base_url": url, "api_keys": []}}, **extra}
    gw = Gateway(tmp_path, url, extra=config, env={"KEYGATE_MASTER_KEY": MASTER})
    gw.secrets += [MASTER, STORED, STORED_2]
    return gw


def two_key_gateway(tmp_path: Path, url: str, **upstream: Any) -> Gateway:
    config = {"base_url": url, "api_keys": ["${K1}", "${K2}"], **upstream}
    gw = Gateway(
        tmp_path,
        url,
        extra={"upstreams": {"openai": config}, "key_refresh_interval": 0.05},
        env={"K1": K1, "K2": K2, "KEYGATE_MASTER_KEY": MASTER},
    )
    gw.secrets += [K1, K2, MASTER]
    return gw


def outputs(gw: Gateway) -> list[Path]:
    """Every file the gateway and CLI wrote, except the master key files themselves."""
    return [p for p in gw.written_files() if p.suffix != ".key"]


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def bearers(mock: MockUpstream) -> list[str]:
    return [r.headers.get("authorization", "")[7:] for r in mock.requests]


def stored(gw: Gateway) -> list[dict[str, Any]]:
    return [v for v in json.loads(gw.cli("upstreams", "list", "--json").stdout) if v["source"] == "store"]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_stored_key_is_sealed_write_only_and_used(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([STORED])
    gw = db_gateway(tmp_path, mock.url)
    added = gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    assert "...1111" in added.stdout and STORED not in added.stdout
    with gw:
        key = gw.create_key("app")["key"]
        reply = sdk(gw, key).chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert reply.choices[0].message.content
    assert bearers(mock) == [STORED]
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


def test_stored_upstream_base_url_must_be_https(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    bad = gw.cli(
        "upstreams", "add", "remote", "--base-url", "http://api.example.com/v1", "--key-stdin",
        input=STORED_2 + "\n", check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "https is required" in bad.stderr
    ok = gw.cli(
        "upstreams", "add", "remote", "--base-url", "https://api.example.com/v1", "--key-stdin",
        input=STORED_2 + "\n",
    )  # fmt: skip
    assert "Stored key" in ok.stdout
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_enable_puts_a_rejected_key_back(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([K2])  # K1 is refused by the provider for a while
    with two_key_gateway(tmp_path, mock.url) as gw:
        client = sdk(gw, gw.create_key()["key"])
        for _ in range(3):
            client.models.list()
        assert bearers(mock).count(K1) == 1  # rejected once, then out of the rotation
        mock.set_api_keys([K1, K2])  # the provider accepts K1 again
        mock.reset()
        for _ in range(4):
            client.models.list()
        assert bearers(mock) == [K2] * 4

        unknown = gw.cli("upstreams", "enable", "openai", "openai#7", check=False)
        assert unknown.returncode != 0 and "openai#7" in unknown.stderr
        other = gw.cli("upstreams", "enable", "nope", "openai#0", check=False)
        assert other.returncode != 0
        done = gw.cli("upstreams", "enable", "openai", "openai#0")
        assert "back into rotation" in done.stdout
        wait_for(lambda: "enabled by an operator" in gw.stderr_path.read_text(), "no reload after enable")
        mock.reset()
        for _ in range(4):
            client.models.list()
        assert sorted(bearers(mock)) == [K1, K1, K2, K2]
    db = sqlite3.connect(tmp_path / "keygate.db")
    rows = db.execute("SELECT target, details FROM audit WHERE action = 'upstreams.enable'").fetchall()
    db.close()
    assert rows == [("openai#0", '{"upstream":"openai"}')]
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_storing_needs_a_master_key_and_says_so_before_asking(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    del gw.env["KEYGATE_MASTER_KEY"]
    add = gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n", check=False)
    assert add.returncode == 2 and "master key" in add.stderr and "master-key generate" in add.stderr
    assert stored(gw) == []
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_the_secret_is_one_line_from_stdin_or_a_hidden_prompt(
    tmp_path: Path, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = db_gateway(tmp_path, mock.url)
    for given, message in (
        ("\n", "no upstream API key given"),
        ("sk-has a-space\n", "must be one line without spaces"),
        ("sk-" + "x" * 5000 + "\n", "must be one line without spaces"),
    ):
        refused = gw.cli("upstreams", "add", "openai", "--key-stdin", input=given, check=False)
        assert refused.returncode == 1 and message in refused.stderr
    assert stored(gw) == []

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []

    def hidden(prompt: str) -> str:
        prompts.append(prompt)
        return f" {STORED} "

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", hidden)
    assert main(["--config", str(gw.config_path), "upstreams", "add", "openai"], gw.env) == 0
    assert prompts == ["upstream API key (input hidden): "]
    assert "...1111" in capsys.readouterr().out
    assert [v["last4"] for v in stored(gw)] == ["1111"]
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_rotate_list_and_retire(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=STORED + "\n")
    rotated = gw.cli("upstreams", "rotate", "openai", "--key-stdin", "--grace", "2h", input=STORED_2 + "\n")
    assert "...2222" in rotated.stdout and "older keys retire at" in rotated.stdout
    first, second = stored(gw)
    assert (first["last4"], first["status"]) == ("1111", "retiring") and first["retire_at"].endswith("Z")
    assert (second["last4"], second["status"], second["retire_at"]) == ("2222", "active", None)
    bad = gw.cli("upstreams", "rotate", "openai", "--key-stdin", "--grace", "later", input="x\n", check=False)
    assert bad.returncode == 1 and "--grace" in bad.stderr
    table = gw.cli("upstreams", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["UPSTREAM", "KEY", "SOURCE", "LAST4"]
    assert any("1111" in row and "retiring" in row for row in table)
    unknown = gw.cli("upstreams", "retire", "openai", "uk_nope", check=False)
    assert unknown.returncode == 1 and "no live key uk_nope" in unknown.stderr
    assert "Retired 1 key(s) of openai: " + first["key_id"] in gw.cli("upstreams", "retire", "openai").stdout
    assert "Retired 0 key(s) of openai: none" in gw.cli("upstreams", "retire", "openai").stdout
    one = gw.cli("upstreams", "retire", "openai", second["key_id"]).stdout
    assert second["key_id"] in one
    assert [v["status"] for v in stored(gw)] == ["retired", "retired"]
    db = sqlite3.connect(tmp_path / "keygate.db")
    assert db.execute("SELECT COUNT(*) FROM upstream_keys WHERE ciphertext IS NOT NULL").fetchone() == (0,)
    db.close()
    assert_no_secret_written(outputs(gw), gw.secrets)


def test_new_upstreams_need_a_base_url_and_valid_options(tmp_path: Path, mock: MockUpstream) -> None:
    gw = db_gateway(tmp_path, mock.url)

    def add(*flags: str) -> Any:
        return gw.cli("upstreams", "add", "beta", *flags, "--key-stdin", input=STORED + "\n", check=False)

    assert "give its --base-url" in add().stderr
    assert (
        "--fallback: nope is not another upstream" in add("--base-url", mock.url, "--fallback", "nope").stderr
    )
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    bad_ca = add("--base-url", mock.url, "--ca-bundle", str(not_pem))
    assert bad_ca.returncode == 2 and "--ca-bundle" in bad_ca.stderr
    insecure = add("--base-url", "http://upstream.example.com/v1", "--allow-insecure", "--fallback", "openai")
    assert insecure.returncode == 0, insecure.stderr
    config_owned = gw.cli("upstreams", "add", "openai", "--base-url", "https://elsewhere.example.com",
                          "--key-stdin", input=STORED_2 + "\n", check=False)  # fmt: skip
    assert config_owned.returncode == 1 and "defined in the config file" in config_owned.stderr
    (beta,) = stored(gw)
    assert (beta["upstream"], beta["base_url"]) == ("beta", "http://upstream.example.com/v1")
    assert_no_secret_written(outputs(gw), gw.secrets)
