"""keygate.logs: redaction of anything key-shaped, the JSON formatter, and configure()."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from keygate.logs import JSONFormatter, configure, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("key sk-proj-abcdef0123456789 failed", "key sk-*** failed"),
        ("sk-live_abc-def.ghi", "sk-***"),
        ("client kg_4Xy8AbCdEfGhIjKlMnOpQrStUvWxYz0123abcdef", "client kg_***"),
        ("admin kga_0123456789abcdef", "admin kga_***"),
        ("Authorization: Bearer abcdef123456", "Authorization: Bearer ***"),
        ("authorization: bearer   abcdef123456", "authorization: bearer   ***"),
        ("SK-UPPER-abcdef", "SK-***"),
        (f"token {JWT} used", "token *** used"),
        ("/v1/sk-proj-ZZZZZZZZZZZZ/x", "/v1/sk-***/x"),
        ("two: sk-aaaaaaaa and sk-bbbbbbbb", "two: sk-*** and sk-***"),
        ("task-123456", "task-***"),  # "sk-" inside a word is matched too: over-masking is the safe side
    ],
)
def test_redact_masks_key_shaped_text(text: str, redacted: str) -> None:
    assert redact(text) == redacted


@pytest.mark.parametrize("text", ["nothing secret here", "sk-abc", "Bearer abc", "eyJshort", "kg_12345", ""])
def test_redact_leaves_other_text_alone(text: str) -> None:
    assert redact(text) == text  # too short to be a key


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    log = logging.getLogger("keygate.test-logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, out
    log.removeHandler(handler)


def test_json_formatter(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    log.warning(
        "upstream said %s",
        "Bearer abcdef123456",
        extra={"upstream": "openai", "count": 3, "detail": "sk-aaaaaaaaaa"},
    )
    entry = json.loads(out.getvalue())
    assert entry["level"] == "warning" and entry["logger"] == "keygate.test-logs"
    assert entry["event"] == "upstream said Bearer ***"
    assert (entry["upstream"], entry["count"], entry["detail"]) == ("openai", 3, "sk-***")
    assert entry["ts"].endswith("Z") and len(entry["ts"]) == len("2027-01-31T00:00:00.000Z")
    assert "exc" not in entry and "args" not in entry and "msg" not in entry


def test_json_formatter_exceptions_and_odd_values(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, out = logger
    try:
        raise ValueError("bad key sk-proj-0123456789abcdef")
    except ValueError:
        log.exception("it failed", extra={"path": object.__new__(object)})
    entry = json.loads(out.getvalue())
    assert entry["level"] == "error" and "ValueError" in entry["exc"]
    assert "sk-proj-0123456789abcdef" not in entry["exc"] and "sk-***" in entry["exc"]
    assert entry["path"].startswith("<object object")  # not JSON: shown as text


def test_configure_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    log = logging.getLogger("keygate")
    saved = (log.level, log.propagate, list(log.handlers))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    try:
        configure("warning")
        configure("debug")
        ours = [h for h in log.handlers if getattr(h, "_keygate", False)]
        assert len(ours) == 1 and log.level == logging.DEBUG and log.propagate is False
        log.info("hello %s", "kg_0123456789abcdefghij")
        assert json.loads(err.getvalue().splitlines()[-1])["event"] == "hello kg_***"
    finally:
        for h in log.handlers:
            if h not in saved[2]:
                log.removeHandler(h)
        log.setLevel(saved[0])
        log.propagate = saved[1]
