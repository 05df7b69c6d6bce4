"""``keygate.ops.audit``: who acted, from where, and the audit record of each action."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime

import pytest

from keygate.ops import audit
from keygate.ops.audit import SERVE, Actor, cli_actor


def test_record_is_json_with_key_shaped_values_masked() -> None:
    before = time.time()
    rec = Actor("adm_1", "10.0.0.1").record(
        "keys.create", "key_1", name="app", policy={"models": ["kg_" + "a" * 38]}, note="Bearer abcdefghijk"
    )
    assert (rec.actor, rec.origin, rec.action, rec.target) == ("adm_1", "10.0.0.1", "keys.create", "key_1")
    assert before <= rec.ts <= time.time()
    details = json.loads(rec.details)
    assert details == {"name": "app", "policy": {"models": ["kg_***"]}, "note": "Bearer ***"}
    assert " " not in rec.details.replace("Bearer ***", "")  # compact separators


def test_record_details_hold_what_json_cannot_without_failing() -> None:
    when = datetime(2030, 1, 2, tzinfo=UTC)
    rec = Actor("a", "o").record("x", "t", big=2**90, when=when, text="naïve ☕", nothing=None)
    assert json.loads(rec.details) == {"big": 2**90, "when": str(when), "text": "naïve ☕", "nothing": None}
    assert "naïve ☕" in rec.details  # stored as text, not \\u escapes
    assert Actor("a", "o").record("x", "t").details == "{}"


def test_cli_actor_names_the_user_and_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "ana")
    assert cli_actor() == Actor("cli:ana", f"cli@{socket.gethostname()}")

    def no_user() -> str:
        raise OSError("no user name in this environment")

    monkeypatch.setattr("getpass.getuser", no_user)
    monkeypatch.setattr("os.getuid", lambda: 4242)
    assert cli_actor().id == "cli:4242"
    assert (SERVE.id, SERVE.origin) == ("serve", "local") and audit.SERVE is SERVE
