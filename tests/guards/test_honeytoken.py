"""Honeytoken keys in process: refused exactly like an unknown key, with a high-severity alert
that names the client and carries the request headers with every credential left out."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from keygate import keys
from keygate.guards.auth import UNKNOWN
from keygate.guards.honeytoken import Honeytoken, is_honeytoken, safe_headers
from keygate.testing import MockUpstream, context, key_record

from ..helpers import Gateway
from .common import decide, logged, post_chat


def test_is_honeytoken() -> None:
    assert is_honeytoken({"honeytoken": True})
    assert (
        not is_honeytoken({"honeytoken": "true"})
        and not is_honeytoken({})
        and not is_honeytoken({"honeytoken": 1})
    )


def test_safe_headers_drop_credentials_and_mask_key_shaped_values() -> None:
    secret = keys.generate()
    headers = {
        "authorization": f"Bearer {secret}",
        "proxy-authorization": "Basic eDp5",
        "cookie": "session=abc",
        "x-api-key": secret,
        "api-key": secret,
        "openai-api-key": "sk-live-0123456789abcdef0123456789",
        "user-agent": "curl/8.0",
        "x-note": f"leaked {secret} here",
        "x-long": "y" * 1000,
    }
    safe = safe_headers(headers)
    assert set(safe) == {"user-agent", "x-note", "x-long"}
    assert safe["user-agent"] == "curl/8.0"
    assert secret not in safe["x-note"] and safe["x-note"].startswith("leaked kg_")
    assert safe["x-long"] == "y" * 300


def test_an_ordinary_key_passes() -> None:
    guard = Honeytoken()
    assert decide(guard, context(key=key_record("k", {"honeytoken": False}))) is None
    assert decide(guard, context(key=key_record("k"))) is None
    assert decide(guard, context()) is None  # no key (yet): nothing to check


def test_a_honeytoken_is_refused_as_an_unknown_key_and_raises_an_alert() -> None:
    secret = keys.generate()
    ctx = context(
        "POST",
        "/v1/chat/completions",
        json={"model": "gpt-4o"},
        headers={
            "Authorization": f"Bearer {secret}",
            "User-Agent": "scanner/1",
            "X-Forwarded-For": "203.0.113.9",
        },
        peer="198.51.100.7",
        key=key_record("key_trap", {"honeytoken": True}, name="trap"),
    )
    ctx.client_ip = "203.0.113.9"  # as resolved from a trusted proxy
    with logged("keygate.alert") as records:
        err = decide(Honeytoken(), ctx)
    assert err is UNKNOWN  # the very same answer as an unknown key: the holder learns nothing
    (alert,) = records
    assert alert.levelname == "CRITICAL"
    assert alert.getMessage().startswith("honeytoken key used")
    fields = alert.__dict__
    assert (fields["alert"], fields["severity"], fields["key_id"], fields["key_name"]) == (
        "honeytoken_used",
        "high",
        "key_trap",
        "trap",
    )
    assert (fields["client_ip"], fields["peer_ip"], fields["method"], fields["path"]) == (
        "203.0.113.9",
        "198.51.100.7",
        "POST",
        "/v1/chat/completions",
    )
    assert fields["request_id"] == ctx.request_id
    assert "authorization" not in fields["headers"] and fields["headers"]["user-agent"] == "scanner/1"
    assert secret not in repr(fields)


def test_a_honeytoken_is_answered_before_its_alert_is_written(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    """Writing the alert (headers redacted, a JSON log line) took longer than refusing an unknown
    key, and it happened before the answer: a holder timing the two could tell a honeytoken from
    an unknown key. The alert is now written after the answer went out: here the alert's log
    handler blocks until the client has its answer, which the client gets all the same."""
    released = threading.Event()

    class Blocking(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            released.wait(5)

    with Gateway(tmp_path, upstream.url) as gw, logged("keygate.alert") as records:
        trap = gw.create_key("trap", "--honeytoken")["key"]
        blocking = Blocking()
        logging.getLogger("keygate.alert").addHandler(blocking)
        try:
            started = time.monotonic()
            r = post_chat(gw.url, trap)
            answered = time.monotonic() - started
        finally:
            released.set()
            logging.getLogger("keygate.alert").removeHandler(blocking)
        assert r.status_code == 401 and r.json() == post_chat(gw.url, keys.generate()).json()
        assert answered < 2.5, f"the answer waited {answered:.1f} s for the alert"
        deadline = time.monotonic() + 5
        while not records and time.monotonic() < deadline:
            time.sleep(0.01)
        (alert,) = records  # and the alert is written all the same
        assert alert.__dict__["alert"] == "honeytoken_used" and alert.__dict__["key_name"] == "trap"
        assert mock.requests == []
