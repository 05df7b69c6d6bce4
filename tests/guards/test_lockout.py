"""Brute-force protection: repeated failed authentications from one client IP lock it out for a
while (429 with Retry-After), logged once. The guard in process, then through a real keygate."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from keygate import keys, schema
from keygate.access_config import Lockout
from keygate.context import Context
from keygate.counters import lockouts as lockout_module
from keygate.errors import AuthenticationFailed, KeygateError, PermissionDenied, RateLimited
from keygate.guards.auth import UNKNOWN
from keygate.guards.lockout import AuthLockout
from keygate.testing import MockUpstream, context, key_record, run_complete

from ..helpers import Gateway
from .common import decide, logged
from .common import post_chat as post


def _guard(**raw: Any) -> AuthLockout:
    return AuthLockout(schema.build(Lockout, raw, "network.lockout"))


def _request(ip: str) -> Context:
    ctx = context("GET", "/v1/models", peer=ip)
    ctx.client_ip = ip  # as the client_ip guard sets it
    return ctx


def _attempt(guard: AuthLockout, ip: str, error: KeygateError | None = UNKNOWN, ok: bool = False) -> object:
    """One request from ``ip`` through the lockout: its refusal, else how it ended (error or key)."""
    ctx = _request(ip)
    refused = decide(guard, ctx)
    if refused is not None:
        ctx.error = refused
    elif ok:  # authenticated and answered
        ctx.key = key_record("key_1")
    else:
        ctx.error = error
    run_complete(guard, ctx)
    return refused


def test_failures_within_the_window_lock_the_address_out() -> None:
    guard = _guard(max_failures=3, window=60, duration=600)
    with logged("keygate.access") as records:
        assert [_attempt(guard, "192.0.2.1") for _ in range(3)] == [None, None, None]
        locked = _attempt(guard, "192.0.2.1", ok=True)  # even the right key
        again = _attempt(guard, "192.0.2.1")
    assert isinstance(locked, RateLimited) and locked.status == 429 and locked.code == "auth_locked_out"
    assert locked.message == "Too many failed authentication attempts from your address; try again later."
    assert 599 <= locked.retry_after <= 600 and dict(locked.headers)["retry-after"] == "600"
    assert isinstance(again, RateLimited)
    # Logged once, with who and the settings; the refusals while locked do not count again.
    assert [r.getMessage() for r in records] == ["client locked out after repeated authentication failures"]
    entry = records[0]
    assert (entry.client_ip, entry.failures, entry.window_s, entry.lockout_s) == (  # type: ignore[attr-defined]
        "192.0.2.1",
        3,
        60.0,
        600.0,
    )
    assert _attempt(guard, "192.0.2.2") is None  # other addresses are not affected


def test_only_failed_authentications_count() -> None:
    guard = _guard(max_failures=2)
    assert _attempt(guard, "192.0.2.1") is None
    for _ in range(3):
        assert _attempt(guard, "192.0.2.1", error=None, ok=True) is None  # successes
        denied = PermissionDenied("no", code="model_not_allowed")
        assert _attempt(guard, "192.0.2.1", error=denied, ok=True) is None  # refused after auth
        assert _attempt(guard, "192.0.2.1", error=denied) is None  # refused before auth, not a 401
        assert _attempt(guard, "192.0.2.1", error=None) is None  # no error at all
    assert _attempt(guard, "192.0.2.1") is None  # the second failure: locked from now on
    assert isinstance(_attempt(guard, "192.0.2.1", ok=True), RateLimited)


def test_a_401_of_an_authenticated_request_does_not_count() -> None:
    guard = _guard(max_failures=1)
    expired = AuthenticationFailed("This API key has expired.", code="expired_api_key")
    assert _attempt(guard, "192.0.2.1", error=expired, ok=True) is None  # a key was found
    assert _attempt(guard, "192.0.2.1", ok=True) is None


def test_failures_older_than_the_window_are_forgotten() -> None:
    guard = _guard(max_failures=3, window=0.05, duration=600)
    _attempt(guard, "192.0.2.1")
    _attempt(guard, "192.0.2.1")
    time.sleep(0.06)
    assert _attempt(guard, "192.0.2.1") is None  # one failure in the window, not three
    assert _attempt(guard, "192.0.2.1") is None
    assert _attempt(guard, "192.0.2.1") is None  # three in the window now: locked
    assert isinstance(_attempt(guard, "192.0.2.1"), RateLimited)


def test_a_lockout_ends_after_its_duration() -> None:
    guard = _guard(max_failures=1, duration=0.05)
    _attempt(guard, "192.0.2.1")
    assert isinstance(_attempt(guard, "192.0.2.1", ok=True), RateLimited)
    time.sleep(0.06)
    assert _attempt(guard, "192.0.2.1", ok=True) is None
    assert _attempt(guard, "192.0.2.1", ok=True) is None
    _attempt(guard, "192.0.2.1")  # and a new failure locks it out again
    assert isinstance(_attempt(guard, "192.0.2.1", ok=True), RateLimited)


def test_memory_stays_bounded_under_a_spray_of_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockout_module, "_MAX_TRACKED", 3)
    guard = _guard(max_failures=2, window=0.05, duration=600)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        _attempt(guard, ip)
    time.sleep(0.06)
    # Tracking is full: the stale entries are dropped to make room, fresh ones are kept.
    _attempt(guard, "192.0.2.4")
    _attempt(guard, "192.0.2.5")
    _attempt(guard, "192.0.2.6")
    _attempt(guard, "192.0.2.4")  # its second failure within the window: locked
    assert isinstance(_attempt(guard, "192.0.2.4", ok=True), RateLimited)
    # Full of fresh entries: everything tracked is dropped rather than grow.
    fresh = _guard(max_failures=2, window=600, duration=600)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"):
        _attempt(fresh, ip)
    _attempt(fresh, "192.0.2.1")  # its earlier failure was dropped: one failure, not two
    assert _attempt(fresh, "192.0.2.1", ok=True) is None
    _attempt(fresh, "192.0.2.4")  # the one tracked since: two failures, locked
    assert isinstance(_attempt(fresh, "192.0.2.4", ok=True), RateLimited)


def test_expired_lockouts_do_not_pile_up_under_a_spray(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracked failures are bounded (``_MAX_TRACKED``) so that a spray from many addresses
    (any IPv6 /64 has 2**64 of them) cannot grow memory without end; the lockouts themselves must
    be bounded too, at least once they are over. Memory is not visible from outside the guard, so
    this looks at what it holds."""
    monkeypatch.setattr(lockout_module, "_MAX_TRACKED", 3)
    guard = _guard(max_failures=1, window=60, duration=0.05)
    for n in range(10):
        _attempt(guard, f"2001:db8::{n:x}")  # each address fails once: locked out
    assert isinstance(_attempt(guard, "2001:db8::0", ok=True), RateLimited)
    time.sleep(0.06)  # every one of those lockouts is over
    for n in range(10, 20):
        _attempt(guard, f"2001:db8::{n:x}")
    held = len(guard._counters.lockouts._locked)  # type: ignore[attr-defined]
    assert held <= 10, f"{held} lockouts held, 10 of them long over"


# -- through a real gateway ----------------------------------------------------------------------


def test_brute_force_lockout(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    extra = {"network": {"lockout": {"max_failures": 3, "window": 60, "duration": 600}}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k")["key"]
        for bad in ("kg_" + "A" * 38, "nope", "eyJ.bad"):
            assert post(gw.url, bad).status_code == 401
        # the right key now gets 429 too: the address is locked out
        r = post(gw.url, key)
        assert r.status_code == 429 and r.json()["error"]["code"] == "auth_locked_out"
        assert 500 <= int(r.headers["retry-after"]) <= 600
        assert mock.requests == []
        gw.stop()
        log = (tmp_path / "stderr.log").read_text()
        assert log.count("client locked out") == 1 and '"client_ip": "127.0.0.1"' in log.replace(
            '":"', '": "'
        )


def test_successes_do_not_count_towards_lockout(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    extra = {"network": {"lockout": {"max_failures": 2}}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("k")["key"]
        assert post(gw.url, "bad").status_code == 401
        for _ in range(3):
            assert post(gw.url, key).status_code == 200
        assert post(gw.url, "bad").status_code == 401
        assert post(gw.url, key).status_code == 429


def test_a_honeytoken_counts_towards_the_lockout_like_an_unknown_key(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    """A honeytoken is refused exactly like an unknown key, so that whoever holds it learns
    nothing; the lockout must treat it the same way too, or trying it a few times tells it apart
    (an unknown key gets locked out, a honeytoken could be tried for ever)."""
    extra = {"network": {"trusted_proxies": ["127.0.0.1/32"], "lockout": {"max_failures": 3}}}
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        trap = gw.create_key("trap", "--honeytoken")["key"]
        unknown = keys.generate()
        answers: dict[str, list[int]] = {}
        for name, key, client in (("unknown", unknown, "198.51.100.1"), ("honeytoken", trap, "198.51.100.2")):
            answers[name] = [post(gw.url, key, **{"X-Forwarded-For": client}).status_code for _ in range(4)]
        assert answers["unknown"] == [401, 401, 401, 429]
        assert answers["honeytoken"] == answers["unknown"]
        assert mock.requests == []
