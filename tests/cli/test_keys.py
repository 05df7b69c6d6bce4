"""``keygate keys`` (``keygate.cli.keys``): create, list, update and revoke client keys, with their
policy and limit flags and their pinned upstream; in process, against a real database."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET, Gateway, assert_no_secret_written

KB = "sk-proj-PIN-beta-key-bbbbbbbbbbbbbbbbbb"
MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def bearers(mock: MockUpstream) -> list[str]:
    return [r.headers.get("authorization", "")[7:] for r in mock.requests]


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def audit_actions(gw: Gateway) -> list[str]:
    db = sqlite3.connect(gw.workdir / "keygate.db")
    try:
        return [r[0] for r in db.execute("SELECT action FROM audit ORDER BY id")]
    finally:
        db.close()


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


def test_keys_pinned_to_config_and_stored_upstreams(tmp_path: Path, mock: MockUpstream) -> None:
    with MockUpstream(api_keys=[KB]) as beta:
        gw = Gateway(tmp_path, mock.url, env={"KEYGATE_MASTER_KEY": MASTER})
        gw.secrets += [KB, MASTER]
        gw.cli("upstreams", "add", "beta", "--base-url", beta.url, "--key-stdin", input=KB + "\n")
        refused = gw.cli("keys", "create", "--name", "x", "--upstream", "nope", check=False)
        assert refused.returncode != 0 and "no upstream named 'nope'" in refused.stderr
        with gw:
            pinned_beta = gw.create_key("b", "--upstream", "beta")
            pinned_openai = gw.create_key("o", "--upstream", "openai")
            unpinned = gw.create_key("d")
            assert pinned_beta["upstream"] == "beta" and unpinned["upstream"] is None
            for data in (pinned_beta, pinned_openai, unpinned, pinned_beta):
                assert sdk(gw, data["key"]).chat.completions.create(**CHAT).choices
            assert bearers(beta) == [KB, KB]
            assert bearers(mock) == [UPSTREAM_SECRET, UPSTREAM_SECRET]

            listed = {v["id"]: v["upstream"] for v in json.loads(gw.cli("keys", "list", "--json").stdout)}
            assert listed[pinned_beta["id"]] == "beta" and listed[unpinned["id"]] is None
            table = gw.cli("keys", "list").stdout
            assert "UPSTREAM" in table and "beta" in table

            bad = gw.cli("keys", "update", pinned_beta["id"], "--upstream", "nope", check=False)
            assert bad.returncode != 0 and "nope" in bad.stderr
            gw.cli("keys", "update", pinned_beta["id"], "--upstream", "")  # unpin: default upstream
            sdk(gw, pinned_beta["key"]).models.list()
            assert len(bearers(beta)) == 2 and bearers(mock)[-1] == UPSTREAM_SECRET
            gw.cli("keys", "update", unpinned["id"], "--upstream", "beta")
            sdk(gw, unpinned["key"]).models.list()
            assert bearers(beta) == [KB] * 3
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_bug2_out_of_range_limit_writes_nothing(tmp_path: Path, mock: MockUpstream) -> None:
    """Regression (issue 10, bug 2): an out-of-range --rpm is refused by its flag, before any write."""
    gw = Gateway(tmp_path, mock.url)
    result = gw.cli("keys", "create", "--name", "big", "--rpm", "99999999999999999999999", check=False)
    assert result.returncode == 1, result.stderr
    assert "--rpm" in result.stderr and "Traceback" not in result.stderr
    assert "kg_" not in result.stdout
    db = sqlite3.connect(tmp_path / "keygate.db")
    assert db.execute("SELECT COUNT(*) FROM keys").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM audit").fetchone() == (0,)


def test_bug4_one_duration_grammar(tmp_path: Path, mock: MockUpstream) -> None:
    """Regression (issue 10, bug 4): --expires-in and --rotate-every read one duration grammar."""
    gw = Gateway(tmp_path, mock.url)
    before = time.time()
    key = gw.create_key("k", "--expires-in", "1.5d", "--rotate-every", "1.5d")
    expires = key["policy"]["expires_at"]
    ts = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
    assert before + 1.5 * 86400 - 2 <= ts <= time.time() + 1.5 * 86400 + 1
    assert key["policy"]["rotate_every"] == 1.5 * 86400


def test_policy_and_limit_flags_are_stored_in_canonical_form(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    key = gw.create_key(
        "narrow",
        *("--allow-model", "gpt-4o*", "--allow-model", " gpt-4o-mini ", "--allow-model", "gpt-4o*"),
        *("--allow-route", "embeddings", "--allow-route", "chat.completions"),
        *("--expires-at", " 2031-01-31T12:00:00+01:00 "),
        *("--allow-ip", "10.1.2.3/8", "--allow-ip", "2001:db8::1/32"),
        *("--max-body-bytes", "4096", "--max-output-tokens", "256"),
        *("--rpm", "60", "--tpm", "1000", "--max-concurrent", "2"),
        *("--budget-usd", "$12.5/month", "--budget-tokens", "1000000/day"),
    )
    assert key["policy"] == {
        "models": ["gpt-4o*", "gpt-4o-mini"],
        "routes": ["chat.completions", "embeddings"],
        "expires_at": "2031-01-31T11:00:00Z",
        "allow_ips": ["10.0.0.0/8", "2001:db8::/32"],
        "max_body_bytes": 4096,
        "max_output_tokens": 256,
        "rpm": 60,
        "tpm": 1000,
        "max_concurrent": 2,
        "budget_usd": {"amount": 12.5, "period": "month"},
        "budget_tokens": {"amount": 1000000, "period": "day"},
    }
    (listed,) = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert listed["policy"] == key["policy"]
    row = gw.cli("keys", "list").stdout.splitlines()[1]
    assert "models=gpt-4o*,gpt-4o-mini" in row and "rpm=60" in row


def test_update_replaces_clears_and_removes_fields(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    key = gw.create_key("k", "--allow-model", "gpt-4o", "--max-body-bytes", "100", "--rpm", "5",
                        "--budget-usd", "5/day")  # fmt: skip
    changed = json.loads(gw.cli("keys", "update", key["id"], "--clear", "models", "--rpm", "0",
                                "--budget-usd", "none", "--rph", "100", "--json").stdout)  # fmt: skip
    assert changed["policy"] == {"max_body_bytes": 100, "rph": 100}
    text = gw.cli("keys", "update", key["id"], "--max-output-tokens", "9").stdout
    assert text.startswith(f"Updated {key['id']}: policy ") and "max_output_tokens=9" in text
    # Nothing to change: the key as it is, and no audit entry.
    before = audit_actions(gw)
    same = json.loads(gw.cli("keys", "update", key["id"], "--rph", "100", "--json").stdout)
    assert same["policy"] == {"max_body_bytes": 100, "rph": 100, "max_output_tokens": 9}
    assert audit_actions(gw) == before == ["keys.create", "keys.update", "keys.update"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--rpm", "-1"), "--rpm must be a positive number"),
        (("--max-concurrent", "-3"), "--max-concurrent must be a positive number"),
        (("--allow-ip", "10.0.0.999"), "--allow-ip: '10.0.0.999' is not an IP address"),
        (("--allow-route", "admin"), "--allow-route: unknown route 'admin'"),
        (("--budget-usd", "lots"), "--budget-usd: expected AMOUNT/PERIOD"),
        (("--budget-tokens", "1.5/day"), "--budget-tokens.amount: a token budget is a whole number"),
        (("--budget-usd", "5/fortnight"), "--budget-usd.period: expected one of"),
        (("--expires-in", "soon"), "--expires-in: expected a duration"),
        (("--expires-at", "someday"), "--expires-at: expected an ISO 8601 time"),
        (("--max-body-bytes", "0"), "--max-body-bytes: expected a whole number > 0"),
        (("--max-output-tokens", str(2**53)), "--max-output-tokens: expected a whole number > 0"),
        (("--name", "tab\there"), "name must be non-blank text"),
        (("--team", "nope"), "no team with id or name 'nope'"),
    ],
)
def test_bad_flags_are_refused_by_name_and_write_nothing(
    tmp_path: Path, upstream: MockUpstream, flags: tuple[str, ...], message: str
) -> None:
    gw = Gateway(tmp_path, upstream.url)
    result = gw.cli("keys", "create", "--name", "k", *flags, check=False)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "kg_" not in result.stdout
    assert json.loads(gw.cli("keys", "list", "--json").stdout) == [] and audit_actions(gw) == []


def test_expires_in_and_expires_at_are_exclusive(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    both = gw.cli(
        "keys", "create", "--name", "k", "--expires-in", "1d", "--expires-at", "2030-01-01", check=False
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_control_characters_are_refused_and_older_rows_listed_one_per_line(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    gw = Gateway(tmp_path, upstream.url)
    for flags in (["--name", "a\nkey_forged  fake"], ["--name", "n", "--allow-model", "gpt-4o\x1b[2K"]):
        refused = gw.cli("keys", "create", *flags, check=False)
        assert refused.returncode == 1 and "control characters" in refused.stderr
    assert json.loads(gw.cli("keys", "list", "--json").stdout) == []
    # Rows stored by an older version, which took such names: each is shown on one line, its
    # control characters escaped, so it can neither forge a row nor drive the terminal.
    ids = [gw.create_key(name)["id"] for name in ("first", "second")]
    db = sqlite3.connect(gw.workdir / "keygate.db")
    with db:
        db.execute(
            "UPDATE keys SET name = ? WHERE id = ?", ("ok\nkey_forged  evil\x1b[31m\x9b\u2028", ids[0])
        )
        db.execute("UPDATE keys SET policy = ? WHERE id = ?", ('{"models": ["m\\r\\u202e"]}', ids[1]))
    db.close()
    lines = gw.cli("keys", "list").stdout.splitlines()
    assert len(lines) == 3 and [line.split()[0] for line in lines[1:]] == ids
    assert "ok\\x0akey_forged  evil\\x1b[31m\\x9b\\u2028" in lines[1]
    assert "models=m\\x0d\\u202e" in lines[2]
    assert not any(c in "\n".join(lines) for c in "\x1b\x9b\r\u2028\u202e")
    # --json keeps the stored text exactly (JSON escapes it).
    assert json.loads(gw.cli("keys", "list", "--json").stdout)[0]["name"].startswith("ok\nkey_forged")
