"""OAuth2 opaque tokens through RFC 7662 introspection: the introspector in process (what it
sends, how it judges answers, what it caches and for how long, failures), then through a real
gateway, both against a real loopback endpoint."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import openai
import pytest

from keygate.access_config import IntrospectionSettings, parse_auth
from keygate.errors import AuthenticationFailed, KeygateError, UpstreamUnavailable
from keygate.guards import introspect as introspect_module
from keygate.guards.authn import Principal
from keygate.guards.introspect import Introspector
from keygate.keycache import KeyCache
from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written
from ..idp import IdP
from .common import Hook, logged

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CLIENT_SECRET = "s3cret-introspection"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with IdP() as provider:
        yield provider


# -- in process ----------------------------------------------------------------------------------


def _settings(
    url: str, client_id: str = "keygate", secret: str = CLIENT_SECRET, **raw: Any
) -> IntrospectionSettings:
    spec = {"url": url, "client_id": "${ID}", "client_secret": "${SECRET}", **raw}
    found = parse_auth({"introspection": spec}, {"ID": client_id, "SECRET": secret}, Path()).introspection
    assert found is not None
    return found


def _verify(introspector: Introspector, *tokens: str, pause: float = 0.0) -> list[Principal | KeygateError]:
    """Each token verified in turn (``pause`` seconds apart), between start and stop."""

    async def run() -> list[Principal | KeygateError]:
        await introspector.start()
        try:
            found = []
            for token in tokens:
                found.append(await introspector.verify(token))
                await asyncio.sleep(pause)
            return found
        finally:
            await introspector.stop()

    return asyncio.run(run())


def _inactive(result: object) -> bool:
    if not isinstance(result, AuthenticationFailed):
        return False
    assert result.status == 401 and result.code == "invalid_token"
    assert result.message == "Invalid or expired access token."
    return True


def test_what_is_sent_to_the_endpoint(key_cache: KeyCache) -> None:
    hook = Hook(status=200, reply=b'{"active": true, "sub": "svc"}')
    try:
        # RFC 6749 2.3.1: client id and secret are form-encoded before they are joined for Basic.
        introspector = Introspector(_settings(hook.url, "svc:gw", "p@ss word/1"), key_cache)
        assert _verify(introspector, "opaque token+1") == [Principal("oauth", "svc", None)]
    finally:
        hook.close()
    (headers,) = hook.headers
    assert headers["authorization"] == "Basic " + base64.b64encode(b"svc%3Agw:p%40ss%20word%2F1").decode()
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["accept"] == "application/json"
    assert parse_qs(hook.bodies[0].decode()) == {
        "token": ["opaque token+1"],
        "token_type_hint": ["access_token"],
    }


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"active": True, "sub": "svc-a"}, Principal("oauth", "svc-a", None)),
        ({"active": True, "client_id": "batch"}, Principal("oauth", "batch", None)),  # no sub: the client
        ({"active": True, "sub": "", "client_id": "batch"}, Principal("oauth", "batch", None)),
        ({"active": True, "sub": "svc", "exp": True}, Principal("oauth", "svc", None)),  # not a time
        ({"active": True, "sub": "svc", "exp": time.time() + 600}, Principal("oauth", "svc", None)),
        ({"active": True, "sub": "svc", "exp": int(time.time()) - 1}, None),  # active, but expired
        ({"active": True}, None),  # names no one
        ({"active": True, "sub": 5}, None),
        ({"active": "true", "sub": "svc"}, None),  # only the JSON true is active
        ({"active": False, "sub": "svc"}, None),
        ({"sub": "svc"}, None),
    ],
)
def test_how_an_answer_is_judged(
    idp: IdP, key_cache: KeyCache, claims: dict[str, Any], expected: Principal | None
) -> None:
    token = f"judge-{len(idp.tokens)}"
    idp.tokens[token] = claims
    (result,) = _verify(Introspector(_settings(idp.url + "/introspect"), key_cache), token)
    assert result == expected if expected is not None else _inactive(result)


def test_an_answer_that_is_not_an_object_is_inactive(key_cache: KeyCache) -> None:
    hook = Hook(status=200, reply=b"[true]")
    try:
        assert _inactive(_verify(Introspector(_settings(hook.url), key_cache), "tok")[0])
    finally:
        hook.close()


def test_the_team_claim_maps_scopes_to_a_known_team(idp: IdP, key_cache: KeyCache) -> None:
    idp.tokens["scoped-1"] = {"active": True, "sub": "svc", "scope": "read embedders write"}
    idp.tokens["scoped-2"] = {"active": True, "sub": "svc", "scope": ["team_research"]}
    idp.tokens["scoped-3"] = {"active": True, "sub": "svc"}
    introspector = Introspector(_settings(idp.url + "/introspect", team_claim="scope"), key_cache)
    found = _verify(introspector, "scoped-1", "scoped-2", "scoped-3")
    assert [p.team if isinstance(p, Principal) else p for p in found[:2]] == ["embedders", "team_research"]
    assert _inactive(found[2])  # with team_claim set, a token naming no team is refused


def test_answers_are_cached_by_kind_and_for_no_longer_than_the_token_lives(
    idp: IdP, key_cache: KeyCache
) -> None:
    idp.tokens["cache-active"] = {"active": True, "sub": "svc", "exp": time.time() + 0.5}
    introspector = Introspector(
        _settings(idp.url + "/introspect", cache_ttl=3600, inactive_cache_ttl=3600), key_cache
    )
    before = idp.introspections
    found = _verify(introspector, "cache-active", "cache-active", "cache-unknown", "cache-unknown")
    assert found[0] == found[1] == Principal("oauth", "svc", None)
    assert _inactive(found[2]) and _inactive(found[3])
    assert idp.introspections - before == 2 == introspector.calls  # one call per token
    # The active answer lives only as long as the token: asked again once it has expired.
    idp.tokens["cache-active"] = {"active": False}
    before = idp.introspections
    found = _verify(introspector, "cache-unknown", pause=0.6)
    late = _verify(introspector, "cache-active")
    assert _inactive(found[0]) and _inactive(late[0]) and idp.introspections - before == 1


def test_an_inactive_cache_ttl_of_zero_caches_nothing(idp: IdP, key_cache: KeyCache) -> None:
    introspector = Introspector(_settings(idp.url + "/introspect", inactive_cache_ttl=0), key_cache)
    before = idp.introspections
    assert all(_inactive(r) for r in _verify(introspector, "never-1", "never-1", "never-1"))
    assert idp.introspections - before == 3


@pytest.mark.parametrize(
    ("status", "reply"), [(500, b"{}"), (200, b"not json"), (401, b'{"error": "invalid_client"}')]
)
def test_an_endpoint_that_fails_gets_503_and_nothing_is_cached(
    key_cache: KeyCache, status: int, reply: bytes
) -> None:
    hook = Hook(status=status, reply=reply)
    try:
        introspector = Introspector(_settings(hook.url), key_cache)
        with logged("keygate.access") as records:
            found = _verify(introspector, "tok", "tok")
        assert introspector.calls == 2  # each one asked again
    finally:
        hook.close()
    for result in found:
        assert isinstance(result, UpstreamUnavailable) and result.status == 503
        assert result.code == "introspection_failed"
    assert [r.getMessage() for r in records] == ["token introspection failed"] * 2


def test_an_unreachable_endpoint_gets_503(key_cache: KeyCache) -> None:
    hook = Hook()
    url = hook.url
    hook.close()  # nothing listens there any more
    (result,) = _verify(Introspector(_settings(url), key_cache), "tok")
    assert isinstance(result, UpstreamUnavailable) and result.code == "introspection_failed"


def test_the_cache_stays_bounded(idp: IdP, key_cache: KeyCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(introspect_module, "_MAX_ENTRIES", 2)
    for n in range(3):
        idp.tokens[f"bound-{n}"] = {"active": True, "sub": f"svc-{n}"}
    for n in ("a", "b"):  # answers cached only as long as these live: 50 ms
        idp.tokens[f"bound-{n}"] = {"active": True, "sub": f"svc-{n}", "exp": time.time() + 0.05}
    # Full of stale entries: those are dropped, and fresh ones are kept.
    short = Introspector(_settings(idp.url + "/introspect", inactive_cache_ttl=0), key_cache)
    _verify(short, "bound-a", "bound-b")
    time.sleep(0.06)
    _verify(short, "bound-0", "bound-1", "bound-0")
    assert short.calls == 4  # bound-0 was kept
    # Full of fresh entries: everything is dropped rather than grow.
    fresh = Introspector(_settings(idp.url + "/introspect"), key_cache)
    _verify(fresh, "bound-0", "bound-1", "bound-2", "bound-0")
    assert fresh.calls == 4  # bound-0 was dropped with the rest


# -- through a real gateway ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(idp: IdP, upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    extra = {
        "auth": {
            "introspection": {
                "url": idp.url + "/introspect",
                "client_id": "${KG_INTROSPECT_ID}",
                "client_secret": "${KG_INTROSPECT_SECRET}",
                "cache_ttl": 3600,
                "inactive_cache_ttl": 3600,
                "team_claim": "scope",
            }
        }
    }
    env = {"KG_INTROSPECT_ID": "keygate", "KG_INTROSPECT_SECRET": CLIENT_SECRET}
    with Gateway(tmp_path_factory.mktemp("oauth"), upstream.url, extra=extra, env=env) as g:
        g.secrets.append(CLIENT_SECRET)
        g.cli("teams", "create", "embedders", "--allow-route", "embeddings")
        g.cli("teams", "create", "staff")
        yield g


def call(gw: Gateway, token: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})


def test_active_token_is_cached(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    idp.tokens["opaque-active-1"] = {
        "active": True,
        "sub": "svc-a",
        "scope": "staff",
        "exp": int(time.time()) + 600,
    }
    client = openai.OpenAI(base_url=gw.url, api_key="opaque-active-1", max_retries=0)
    before = idp.introspections
    for _ in range(3):
        last = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert idp.introspections - before == 1 and idp.bad_auth == 0
    assert len(mock.requests) == 3
    # The last (cached) request's own entry: the module's gateway logs other tests' 200s too.
    entry = gw.wait_entry(lambda e: e["request_id"] == last.headers["x-keygate-request-id"])
    assert entry["status"] == 200 and entry["key_id"] == "oauth:svc-a"


def test_inactive_token_is_rejected_and_cached(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    before = idp.introspections
    for _ in range(3):
        r = call(gw, "opaque-unknown")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    assert idp.introspections - before == 1
    assert mock.requests == []


def test_cache_lives_no_longer_than_the_token(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    # exp is whole seconds: + 2 leaves the token 1 to 2 s to live (+ 1 could leave a few ms, and
    # the first call would then meet an expired token)
    idp.tokens["opaque-short"] = {
        "active": True,
        "sub": "svc-b",
        "scope": "staff",
        "exp": int(time.time()) + 2,
    }
    assert call(gw, "opaque-short").status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and call(gw, "opaque-short").status_code == 200:
        time.sleep(0.2)
    idp.tokens["opaque-short"] = {"active": False}
    assert call(gw, "opaque-short").status_code == 401


def test_scope_maps_to_team_policy(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    idp.tokens["opaque-scoped"] = {"active": True, "client_id": "batch-job", "scope": "read embedders"}
    r = call(gw, "opaque-scoped")
    assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"
    r = httpx.post(
        f"{gw.url}/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
        headers={"Authorization": "Bearer opaque-scoped"},
    )
    assert r.status_code == 200
    assert [q.path for q in mock.requests] == ["/v1/embeddings"]


def test_idp_down_is_503_and_not_cached(gw: Gateway, idp: IdP, mock: MockUpstream) -> None:
    idp.tokens["opaque-later"] = {"active": True, "sub": "svc-c", "scope": "staff"}
    idp.down = True
    try:
        r = call(gw, "opaque-later")
        assert r.status_code == 503 and r.json()["error"]["code"] == "introspection_failed"
    finally:
        idp.down = False
    assert call(gw, "opaque-later").status_code == 200
    assert len(mock.requests) == 1


def test_no_secret_written(gw: Gateway) -> None:
    gw.stop()
    assert_no_secret_written(gw.written_files(), [*gw.secrets, "opaque-active-1", "opaque-scoped"])
    gw.start()
