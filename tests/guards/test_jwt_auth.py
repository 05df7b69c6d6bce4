"""JWT bearer (OIDC) authentication: the verifier and its JWKS cache in process (odd key sets,
tokens without a kid, identity-provider outages, clock skew, subjects, static keys of each
algorithm family), then through a real gateway with JWKS from a real loopback IdP, every
rejection with its own test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keygate.access_config import JWTSettings, parse_auth
from keygate.errors import AuthenticationFailed, KeygateError, PermissionDenied
from keygate.guards.authn import Principal
from keygate.guards.jwt_auth import JWTVerifier
from keygate.keycache import KeyCache
from keygate.testing import MockUpstream

from ..helpers import Gateway, assert_no_secret_written
from ..idp import AUDIENCE, ISSUER, IdP, SigningKey
from .common import Hook, logged

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


# -- in process ----------------------------------------------------------------------------------


def _settings(tmp_path: Path, **raw: Any) -> JWTSettings:
    found = parse_auth({"jwt": {"issuer": ISSUER, "audience": AUDIENCE, **raw}}, {}, tmp_path).jwt
    assert found is not None
    return found


def _verify(verifier: JWTVerifier, *tokens: str) -> list[Principal | KeygateError]:
    """Each token verified in turn, between the verifier's start and stop."""

    async def run() -> list[Principal | KeygateError]:
        await verifier.start()
        try:
            return [await verifier.verify(t) for t in tokens]
        finally:
            await verifier.stop()

    return asyncio.run(run())


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, **overrides}
    return {k: v for k, v in body.items() if v is not None}


def _message(result: object) -> str:
    assert (
        isinstance(result, AuthenticationFailed) and result.status == 401 and result.code == "invalid_token"
    )
    return result.message


@pytest.fixture
def served() -> Iterator[Hook]:
    """A JWKS endpoint whose answer a test sets (``reply``, ``status``)."""
    hook = Hook(status=200)
    yield hook
    hook.close()


def test_keys_not_for_signing_or_not_usable_are_skipped(
    tmp_path: Path, served: Hook, key_cache: KeyCache
) -> None:
    good, enc = SigningKey("good"), SigningKey("enc")
    served.reply = json.dumps(
        {
            "keys": [
                good.jwk(),
                {**enc.jwk(), "use": "enc"},
                {"kty": "RSA", "kid": "broken", "n": "AQAB"},  # no exponent
                {"kty": "nonsense", "kid": "odd"},
                "not a key",
            ]
        }
    ).encode()
    verifier = JWTVerifier(_settings(tmp_path, jwks_url=served.url), key_cache)
    ok, unknown = _verify(verifier, good.sign(), enc.sign())
    assert ok == Principal("jwt", "alice", None)
    assert _message(unknown) == "The bearer token was signed with an unknown key."


def test_a_token_without_a_kid_is_verified_with_the_only_key(
    tmp_path: Path, served: Hook, key_cache: KeyCache
) -> None:
    only = SigningKey("only")
    no_kid = jwt.encode(_claims(), only.private, algorithm="RS256")
    assert "kid" not in jwt.get_unverified_header(no_kid)
    served.reply = json.dumps({"keys": [only.jwk()]}).encode()
    assert _verify(JWTVerifier(_settings(tmp_path, jwks_url=served.url), key_cache), no_kid) == [
        Principal("jwt", "alice", None)
    ]
    # With several keys in the set a missing kid cannot pick one.
    served.reply = json.dumps({"keys": [only.jwk(), SigningKey("other").jwk()]}).encode()
    (result,) = _verify(JWTVerifier(_settings(tmp_path, jwks_url=served.url), key_cache), no_kid)
    assert _message(result) == "The bearer token was signed with an unknown key."


@pytest.mark.parametrize(
    ("status", "reply"), [(200, b"[1, 2]"), (200, b'{"keys": 5}'), (200, b"<html>"), (500, b"{}")]
)
def test_a_bad_jwks_answer_keeps_the_last_good_keys(
    tmp_path: Path, served: Hook, key_cache: KeyCache, status: int, reply: bytes
) -> None:
    signer = SigningKey("k1")
    served.reply = json.dumps({"keys": [signer.jwk()]}).encode()
    verifier = JWTVerifier(
        _settings(tmp_path, jwks_url=served.url, jwks_cache_ttl=0.001, jwks_refresh_interval=0), key_cache
    )

    async def run() -> list[object]:
        await verifier.start()
        try:
            first = await verifier.verify(signer.sign())
            served.status, served.reply = status, reply
            fetches = served.gets
            with logged("keygate.access") as records:
                await asyncio.sleep(0.01)  # past the cache ttl: the next use refetches
                second = await verifier.verify(signer.sign())
            assert served.gets > fetches
            assert {r.getMessage() for r in records} == {"JWKS fetch failed; keeping the last good keys"}
            assert all(r.keys == 1 for r in records)  # type: ignore[attr-defined]
            return [first, second]
        finally:
            await verifier.stop()

    assert asyncio.run(run()) == [Principal("jwt", "alice", None)] * 2


def test_an_identity_provider_down_at_start_accepts_nothing_until_it_answers(
    tmp_path: Path, served: Hook, key_cache: KeyCache
) -> None:
    signer = SigningKey("k1")
    served.status, served.reply = 503, b"{}"
    verifier = JWTVerifier(_settings(tmp_path, jwks_url=served.url, jwks_refresh_interval=0), key_cache)

    async def run() -> list[object]:
        await verifier.start()
        try:
            down = await verifier.verify(signer.sign())
            served.status, served.reply = 200, json.dumps({"keys": [signer.jwk()]}).encode()
            up = await verifier.verify(signer.sign())  # an unknown kid refetches
            return [down, up]
        finally:
            await verifier.stop()

    down, up = asyncio.run(run())
    assert _message(down) == "The bearer token was signed with an unknown key."
    assert up == Principal("jwt", "alice", None)


def _static(tmp_path: Path, cache: KeyCache, private: Any, algorithm: str, **raw: Any) -> JWTVerifier:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    settings = _settings(tmp_path, public_key_file="idp.pem", algorithms=[algorithm], **raw)
    return JWTVerifier(settings, cache)


@pytest.mark.parametrize(
    ("algorithm", "make"),
    [
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
        ("RS256", lambda: SigningKey("x").private),
    ],
)
def test_a_static_public_key_of_each_algorithm_family(
    key_cache: KeyCache, tmp_path: Path, algorithm: str, make: Any
) -> None:
    private = make()
    verifier = _static(tmp_path, key_cache, private, algorithm)
    good = jwt.encode(_claims(), private, algorithm=algorithm)
    other = jwt.encode(_claims(), make(), algorithm=algorithm)
    ok, forged = _verify(verifier, good, other)
    assert ok == Principal("jwt", "alice", None) and _message(forged) == "Invalid bearer token."


def test_the_algorithm_comes_from_the_config_not_the_token(key_cache: KeyCache, tmp_path: Path) -> None:
    signer = SigningKey("k1")
    verifier = _static(tmp_path, key_cache, signer.private, "RS256")
    ps256 = jwt.encode(_claims(), signer.private, algorithm="PS256")  # the same key, another algorithm
    (result,) = _verify(verifier, ps256)
    assert _message(result) == "The bearer token's algorithm is not accepted."


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30", "...."])
def test_a_token_that_does_not_parse_is_invalid(key_cache: KeyCache, tmp_path: Path, token: str) -> None:
    (result,) = _verify(_static(tmp_path, key_cache, SigningKey("k1").private, "RS256"), token)
    assert _message(result) == "Invalid bearer token."


def test_clock_skew_within_the_leeway_is_allowed(key_cache: KeyCache, tmp_path: Path) -> None:
    signer = SigningKey("k1")
    now = int(time.time())
    late = jwt.encode(_claims(exp=now - 10), signer.private, algorithm="RS256")
    early = jwt.encode(_claims(nbf=now + 10), signer.private, algorithm="RS256")
    lenient = _static(tmp_path, key_cache, signer.private, "RS256", leeway=30)
    assert _verify(lenient, late, early) == [Principal("jwt", "alice", None)] * 2
    strict = _static(tmp_path, key_cache, signer.private, "RS256", leeway=0)
    expired, not_yet = _verify(strict, late, early)
    assert isinstance(expired, AuthenticationFailed) and expired.code == "expired_token"
    assert expired.message == "The bearer token has expired."
    assert _message(not_yet) == "The bearer token is not valid yet."


def test_the_subject_claim(key_cache: KeyCache, tmp_path: Path) -> None:
    signer = SigningKey("k1")

    def token(**claims: Any) -> str:
        return jwt.encode(_claims(**claims), signer.private, algorithm="RS256")

    by_email = _static(tmp_path, key_cache, signer.private, "RS256", subject_claim="email")
    ok, missing, empty, odd = _verify(
        by_email, token(email="a@example"), token(), token(email=""), token(email=["a@example"])
    )
    assert ok == Principal("jwt", "a@example", None)
    for result in (missing, empty, odd):
        assert _message(result) == "The bearer token names no subject."
    (no_sub,) = _verify(_static(tmp_path, key_cache, signer.private, "RS256"), token(sub=None))
    assert _message(no_sub) == "The bearer token names no subject."


def test_the_team_claim_names_a_known_team(tmp_path: Path, key_cache: KeyCache) -> None:
    signer = SigningKey("k1")
    pem = signer.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    verifier = JWTVerifier(_settings(tmp_path, public_key_file="idp.pem", team_claim="groups"), key_cache)

    def token(groups: object) -> str:
        return jwt.encode(_claims(groups=groups), signer.private, algorithm="RS256")

    found = _verify(
        verifier,
        token(["staff", "research"]),  # the first value naming a known team (by name)
        token("team_embed other"),  # space-separated, by id
        token(["nobody", "none"]),  # no known team: the first value (refused later as unknown)
    )
    assert [p.team if isinstance(p, Principal) else p for p in found] == ["research", "team_embed", "nobody"]
    # A claim that names no team at all is refused, never "no team" (no team policy at all).
    for refused in _verify(
        verifier,
        token(None),
        token(""),
        token("  "),
        token(7),
        token([]),
        token([1, 2]),
        token({"a": "research"}),
    ):
        assert (
            isinstance(refused, PermissionDenied) and refused.status == 403 and refused.code == "unknown_team"
        )
        assert refused.message == "The bearer token names no team known to this gateway."
    # Without a team_claim setting, a token needs no team.
    loose = JWTVerifier(_settings(tmp_path, public_key_file="idp.pem"), key_cache)
    (principal,) = _verify(loose, token(None))
    assert isinstance(principal, Principal) and principal.team is None
    # With a default team, a token whose claim is absent or empty gets it; a malformed claim or
    # one naming an unknown team does not.
    defaulted = JWTVerifier(
        _settings(tmp_path, public_key_file="idp.pem", team_claim="groups", default_team="embedders"),
        key_cache,
    )
    found = _verify(
        defaulted, token(None), token(""), token([]), token(7), token(["nobody"]), token("research")
    )
    assert [p.team if isinstance(p, Principal) else p.code for p in found] == [
        "embedders",
        "embedders",
        "embedders",
        "unknown_team",
        "nobody",  # refused by Authenticate as unknown_team
        "research",
    ]


# -- through a real gateway ----------------------------------------------------------------------


class MemberKey(SigningKey):
    """The IdP's key for the module's gateway, whose tokens name the team ``staff`` unless a test
    says otherwise (``team=None`` leaves the claim out): that gateway maps ``team`` to a team."""

    def sign(self, claims: dict[str, Any] | None = None, *, kid: str | None = None, **overrides: Any) -> str:
        return super().sign({"team": "staff", **(claims or {})}, kid=kid, **overrides)


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    with IdP() as provider:
        provider.keys.append(MemberKey("k1"))
        yield provider


@pytest.fixture(scope="module")
def gw(idp: IdP, upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    extra = {
        "auth": {
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": idp.url + "/jwks.json",
                "algorithms": ["RS256"],
                "leeway": 5,
                "team_claim": "team",
                "jwks_refresh_interval": 3600,
            }
        }
    }
    with Gateway(tmp_path_factory.mktemp("jwt"), upstream.url, extra=extra) as g:
        g.cli("teams", "create", "research", "--allow-model", "gpt-4o*")
        g.cli("teams", "create", "staff")
        yield g


@pytest.fixture
def key(idp: IdP) -> SigningKey:
    return idp.keys[0]


def call(gw: Gateway, token: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"})


def rejected(gw: Gateway, token: str, mock: MockUpstream, needle: str = "") -> None:
    r = call(gw, token)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and needle in r.json()["error"]["message"]
    assert mock.requests == []


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_valid_token_through_the_sdk_and_usage_identity(
    gw: Gateway, key: SigningKey, mock: MockUpstream
) -> None:
    client = openai.OpenAI(base_url=gw.url, api_key=key.sign(sub="alice@example"), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content
    assert len(mock.requests) == 1
    # This request's own entry: the module's gateway logs other tests' JWT requests too.
    entry = gw.wait_entry(lambda e: e["request_id"] == raw.headers["x-keygate-request-id"])
    assert entry["status"] == 200 and entry["key_id"] == "jwt:alice@example"


def test_team_claim_maps_to_team_policy(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    token = key.sign({"team": "research"})
    assert call(gw, token).status_code == 200
    r = httpx.post(
        f"{gw.url}/chat/completions",
        json={**CHAT, "model": "o3"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 403 and "o3" in r.json()["error"]["message"]
    r = call(gw, key.sign({"team": "no-such-team"}))
    assert r.status_code == 403 and r.json()["error"]["code"] == "unknown_team"
    assert len(mock.requests) == 1


@pytest.mark.parametrize("team", [None, "", 7, [], ["", 3], {"name": "research"}])
def test_a_token_that_names_no_team_is_refused(
    gw: Gateway, key: SigningKey, mock: MockUpstream, team: object
) -> None:
    """With team_claim set, a token without a usable claim used to pass as "no team", and so with
    no team policy at all: the research team's model list did not apply to it."""
    r = httpx.post(
        f"{gw.url}/chat/completions",
        json={**CHAT, "model": "o3"},  # a model the research team does not allow
        headers={"Authorization": f"Bearer {key.sign({'team': team})}"},
    )
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("permission_denied", "unknown_team")
    assert mock.requests == []


def test_alg_none(gw: Gateway, mock: MockUpstream) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300}
    token = b64({"alg": "none", "typ": "JWT", "kid": "k1"}) + "." + b64(claims) + "."
    rejected(gw, token, mock, "algorithm")


def test_hs256_signed_with_the_rsa_public_key(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    pem = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300}
    header = b64({"alg": "HS256", "typ": "JWT", "kid": "k1"})
    signing_input = f"{header}.{b64(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()).rstrip(
        b"="
    )
    rejected(gw, f"{signing_input}.{sig.decode()}", mock, "algorithm")


def test_expired(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    now = int(time.time())
    rejected(gw, key.sign(exp=now - 60, iat=now - 600), mock, "expired")


def test_not_yet_valid(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    rejected(gw, key.sign(nbf=int(time.time()) + 120), mock, "not valid yet")


def test_wrong_audience(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    rejected(gw, key.sign(aud="someone-else"), mock, "not meant for this gateway")


def test_wrong_issuer(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    rejected(gw, key.sign(iss="https://evil.test"), mock, "issuer")


def test_missing_required_claims(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    for missing in ("exp", "iss", "aud"):
        rejected(gw, key.sign(**{missing: None}), mock)


def test_bad_signature(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    forger = SigningKey("k1")  # same kid, different private key
    rejected(gw, forger.sign(), mock, "Invalid bearer token")
    good = key.sign()
    head, _body, sig = good.split(".")
    tampered = b64({**jwt.decode(good, options={"verify_signature": False}), "sub": "root"})
    rejected(gw, f"{head}.{tampered}.{sig}", mock, "Invalid bearer token")


def test_unknown_kid_refetches_at_most_once_per_interval(
    gw: Gateway, idp: IdP, key: SigningKey, mock: MockUpstream
) -> None:
    assert call(gw, key.sign()).status_code == 200
    before = idp.jwks_fetches
    stranger = SigningKey("unknown-kid")
    for _ in range(3):
        rejected_response = call(gw, stranger.sign())
        assert (
            rejected_response.status_code == 401
            and "unknown key" in rejected_response.json()["error"]["message"]
        )
    # the refresh interval is an hour: the first unknown kid may refetch, the next ones may not
    assert idp.jwks_fetches - before <= 1
    assert len(mock.requests) == 1


def test_keygate_keys_still_work_alongside_jwt(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("classic")["key"]
    assert call(gw, key).status_code == 200
    mock.reset()
    rejected(gw, "not-a-jwt-nor-key", mock)


def test_rotation_and_idp_outage(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream, mock: MockUpstream
) -> None:
    with IdP() as provider:
        first = SigningKey("first")
        provider.keys.append(first)
        extra = {
            "auth": {
                "keys": False,
                "jwt": {
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "jwks_url": provider.url + "/jwks.json",
                    "jwks_refresh_interval": 0,
                    "jwks_cache_ttl": 0.001,  # refetch on every request: proves outages keep the last keys
                },
            }
        }
        with Gateway(tmp_path_factory.mktemp("jwt-rot"), upstream.url, extra=extra) as gw:
            assert call(gw, first.sign()).status_code == 200
            second = SigningKey("second")
            provider.keys.append(second)  # rotation: the new kid is picked up on first sight
            assert call(gw, second.sign()).status_code == 200
            provider.down = True
            fetches = provider.jwks_fetches
            assert call(gw, first.sign()).status_code == 200  # last good keys keep working
            assert call(gw, second.sign()).status_code == 200
            assert provider.jwks_fetches > fetches  # it did try the IdP, which failed
            assert call(gw, gw.create_key("k")["key"]).status_code == 401  # keys are off here
            assert len(mock.requests) == 4


def test_static_public_key_file(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream, mock: MockUpstream
) -> None:
    signer = SigningKey("static")
    work = tmp_path_factory.mktemp("jwt-static")
    (work / "idp.pem").write_bytes(
        signer.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    extra = {"auth": {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "public_key_file": "idp.pem"}}}
    with Gateway(work, upstream.url, extra=extra) as gw:
        assert call(gw, signer.sign()).status_code == 200
        assert call(gw, SigningKey("static").sign()).status_code == 401
        assert len(mock.requests) == 1


def test_a_default_team_for_tokens_without_one(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream, mock: MockUpstream
) -> None:
    signer = SigningKey("static")
    work = tmp_path_factory.mktemp("jwt-default-team")
    (work / "idp.pem").write_bytes(
        signer.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    jwt_settings = {"public_key_file": "idp.pem", "team_claim": "team", "default_team": "research"}
    extra = {"auth": {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, **jwt_settings}}}
    with Gateway(work, upstream.url, extra=extra) as gw:
        gw.cli("teams", "create", "research", "--allow-model", "gpt-4o*")
        gw.cli("teams", "create", "open")
        anonymous = signer.sign()  # no team claim: the research team, and its model list
        assert call(gw, anonymous).status_code == 200
        r = httpx.post(
            f"{gw.url}/chat/completions",
            json={**CHAT, "model": "o3"},
            headers={"Authorization": f"Bearer {anonymous}"},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
        named = httpx.post(
            f"{gw.url}/chat/completions",
            json={**CHAT, "model": "o3"},
            headers={"Authorization": f"Bearer {signer.sign({'team': 'open'})}"},
        )
        assert named.status_code == 200  # a token that names its team gets that one
        assert call(gw, signer.sign({"team": "nobody"})).status_code == 403  # unknown: refused
        assert [r.json()["model"] for r in mock.requests] == ["gpt-4o-mini", "o3"]


def test_no_token_is_written_anywhere(gw: Gateway, key: SigningKey, mock: MockUpstream) -> None:
    """Valid, expired and forged JWTs: none of them may appear in any file the gateway wrote."""
    now = int(time.time())
    good = key.sign(sub="bob@example")
    expired = key.sign({"exp": now - 600, "iat": now - 1200})
    forged = good[: good.rindex(".") + 1] + "A" * 40
    assert call(gw, good).status_code == 200
    assert call(gw, expired).status_code == 401
    last = call(gw, forged)
    assert last.status_code == 401
    # Until the last request is written (the first one's entry could be there before the others').
    gw.wait_entry(lambda e: e["request_id"] == last.headers["x-keygate-request-id"])
    assert_no_secret_written(gw.written_files(), [good, expired, forged, *gw.secrets])
