from __future__ import annotations

from keygate.forward import scrub
from keygate.types import Secret


def test_scrub_removes_the_key_that_was_used() -> None:
    key = Secret("sk-live-0123456789abcdef")
    body = b'{"error":{"message":"key sk-live-0123456789abcdef is over quota"}}'
    assert scrub(body, key) == b'{"error":{"message":"key [redacted] is over quota"}}'
    assert scrub(b'{"ok":1}', key) == b'{"ok":1}'
