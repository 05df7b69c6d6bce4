"""``keygate keys rotate`` / ``keys due`` and the ``--rotate-every`` / ``--honeytoken`` flags
(``keygate.cli.key_rotation``): rotation with a grace period, schedules, honeytokens."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai

from keygate import keys as keyfmt
from keygate.testing import MockUpstream
from keygate.times import instant

from ..helpers import Gateway, assert_no_secret_written


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def rotate(gw: Gateway, key_id: str, grace: str) -> str:
    data = json.loads(gw.cli("keys", "rotate", key_id, "--grace", grace, "--json").stdout)
    gw.secrets.append(data["key"])
    assert data["id"] == key_id
    return str(data["key"])


def test_rotate_keeps_record_and_old_secret_works_during_grace(tmp_path: Path, mock: MockUpstream) -> None:
    with Gateway(tmp_path, mock.url) as gw:
        created = gw.create_key("app")
        old = created["key"]
        sdk(gw, old).models.list()
        new = rotate(gw, created["id"], "1h")
        assert new != old
        sdk(gw, new).models.list()
        sdk(gw, old).models.list()  # still inside its grace period
        newer = rotate(gw, created["id"], "0")
        sdk(gw, newer).models.list()
        for gone in (new,):  # rotated away with no grace: refused at once
            try:
                sdk(gw, gone).models.list()
                raise AssertionError("a rotated-away secret still works")
            except openai.AuthenticationError:
                pass
        sdk(gw, old).models.list()  # the first grace period is still running
        # One record, one history: the same id and hint of the newest secret.
        (listed,) = json.loads(gw.cli("keys", "list", "--json").stdout)
        assert listed["id"] == created["id"] and listed["hint"] == keyfmt.hint(newer)
        assert instant(listed["policy"]["rotated_at"]) is not None
        gw.wait_entry(lambda e: e.get("status") == 200 and e.get("key_id") == created["id"])
    usage = json.loads(gw.cli("usage", "--json").stdout)
    assert [u["key_id"] for u in usage if u["requests"] and u["key_id"]] == [created["id"]]
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_old_secret_stops_when_grace_ends(tmp_path: Path, mock: MockUpstream) -> None:
    with Gateway(tmp_path, mock.url) as gw:
        created = gw.create_key("app")
        new = rotate(gw, created["id"], "0.3s")
        headers = {"Authorization": f"Bearer {created['key']}"}
        deadline = time.monotonic() + 15
        while httpx.get(f"{gw.url}/models", headers=headers).status_code == 200:
            assert time.monotonic() < deadline, "the old secret outlived its grace period"
            time.sleep(0.05)
        r = httpx.get(f"{gw.url}/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        sdk(gw, new).models.list()
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_rotation_schedule_and_due_list_and_warning(tmp_path: Path, mock: MockUpstream) -> None:
    gw = Gateway(tmp_path, mock.url)
    soon = gw.create_key("soon", "--rotate-every", "2d")
    gw.create_key("later", "--rotate-every", "90d")
    gw.create_key("never")
    due = json.loads(gw.cli("keys", "due", "--within", "7d", "--json").stdout)
    assert [(d["id"], d["reason"], d["overdue"]) for d in due] == [(soon["id"], "rotation", False)]
    assert json.loads(gw.cli("keys", "due", "--within", "1d", "--json").stdout) == []
    assert "soon" in gw.cli("keys", "due").stdout
    with gw:
        deadline = time.monotonic() + 10
        while "client key due for rotation" not in gw.stderr_path.read_text():
            assert time.monotonic() < deadline, "no rotation warning at start"
            time.sleep(0.02)
    assert soon["id"] in gw.stderr_path.read_text()
    # Rotating restarts the schedule.
    rotate(gw, soon["id"], "0")
    (again,) = json.loads(gw.cli("keys", "due", "--json").stdout)  # due in two days again
    assert again["id"] == soon["id"] and again["due_at"] >= due[0]["due_at"]
    gw.cli("keys", "update", soon["id"], "--rotate-every", "0")
    (record,) = [k for k in json.loads(gw.cli("keys", "list", "--json").stdout) if k["id"] == soon["id"]]
    assert "rotate_every" not in record["policy"]
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_honeytoken_is_refused_like_an_unknown_key_and_alerts(tmp_path: Path, mock: MockUpstream) -> None:
    with Gateway(tmp_path, mock.url) as gw:
        trap = gw.create_key("decoy", "--honeytoken")
        unknown = keyfmt.generate()
        gw.secrets.append(unknown)
        headers = {"User-Agent": "evil-scanner/1.0", "X-Forwarded-For": "203.0.113.9", "Cookie": "sid=abc123"}
        r_trap = httpx.get(f"{gw.url}/models", headers={**headers, "Authorization": f"Bearer {trap['key']}"})
        r_unknown = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {unknown}"})
        assert r_trap.status_code == r_unknown.status_code == 401
        assert r_trap.json() == r_unknown.json()
        try:
            sdk(gw, trap["key"]).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
            raise AssertionError("a honeytoken was accepted")
        except openai.AuthenticationError:
            pass
        deadline = time.monotonic() + 5
        while "honeytoken_used" not in gw.stderr_path.read_text():
            assert time.monotonic() < deadline, "no honeytoken alert"
            time.sleep(0.02)
    assert mock.requests == []  # nothing reached the upstream
    alerts = [
        json.loads(line) for line in gw.stderr_path.read_text().splitlines() if "honeytoken_used" in line
    ]
    alert = alerts[0]
    assert alert["level"] == "critical" and alert["severity"] == "high"
    assert alert["client_ip"] == "127.0.0.1" and alert["key_id"] == trap["id"]
    assert alert["headers"]["user-agent"] == "evil-scanner/1.0"
    assert "authorization" not in alert["headers"] and "cookie" not in alert["headers"]
    assert "abc123" not in gw.stderr_path.read_text()
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_rotate_in_text_mode_and_what_it_refuses(tmp_path: Path, mock: MockUpstream) -> None:
    gw = Gateway(tmp_path, mock.url)
    created = gw.create_key("app")
    shown = gw.cli("keys", "rotate", created["id"])
    (secret,) = [w for w in shown.stdout.split() if w.startswith("kg_")]
    gw.secrets.append(secret)
    assert keyfmt.is_well_formed(secret) and "keeps working until" in shown.stderr
    (listed,) = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert listed["hint"] == keyfmt.hint(secret)
    bad_grace = gw.cli("keys", "rotate", created["id"], "--grace", "a while", check=False)
    assert bad_grace.returncode == 1 and "--grace: expected a duration" in bad_grace.stderr
    missing = gw.cli("keys", "rotate", "key_missing", check=False)
    assert missing.returncode == 1 and "no key with id 'key_missing'" in missing.stderr
    gw.cli("keys", "revoke", created["id"])
    revoked = gw.cli("keys", "rotate", created["id"], check=False)
    assert revoked.returncode == 1 and "is revoked; create a new key instead" in revoked.stderr
    assert "kg_" not in revoked.stdout + revoked.stderr
    bad_every = gw.cli("keys", "create", "--name", "x", "--rotate-every", "monthly", check=False)
    assert bad_every.returncode == 1 and "--rotate-every: expected a duration" in bad_every.stderr
    bad_within = gw.cli("keys", "due", "--within", "soon", check=False)
    assert bad_within.returncode == 1 and "--within" in bad_within.stderr
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_due_lists_expiry_and_overdue_keys(tmp_path: Path, mock: MockUpstream) -> None:
    gw = Gateway(tmp_path, mock.url)
    past = gw.create_key("past", "--expires-at", "2001-01-01T00:00:00Z")
    soon = gw.create_key("soon", "--expires-in", "1h")
    gw.create_key("trap", "--honeytoken", "--rotate-every", "1s")  # a honeytoken is never due
    due = json.loads(gw.cli("keys", "due", "--json").stdout)
    assert [(d["id"], d["reason"], d["overdue"]) for d in due] == [
        (past["id"], "expiry", True),
        (soon["id"], "expiry", False),
    ]
    assert due[0]["due_at"] == "2001-01-01T00:00:00Z"
    table = gw.cli("keys", "due").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "REASON", "DUE", "OVERDUE"]
    assert table[1].split()[-1] == "yes" and table[2].split()[-1] == "no"
