"""Authentication in process: keygate keys (KeyAuth), the choice between keys, JWTs and opaque
tokens by the token's shape (Authenticate), the principal a token stands for, the team claim,
and which guard the configuration builds. Real verifiers: a JWT verifier with a static key, an
introspector against a real loopback endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from keygate import keys
from keygate.access_config import parse_auth
from keygate.config import load_settings
from keygate.context import Context
from keygate.errors import AuthenticationFailed, ConfigError, PermissionDenied
from keygate.guards.access import build_authenticate
from keygate.guards.auth import MALFORMED, MISSING, REVOKED, UNKNOWN, KeyAuth, bearer_token
from keygate.guards.authn import NO_METHOD, Authenticate, claim_team
from keygate.guards.introspect import Introspector
from keygate.guards.jwt_auth import JWTVerifier
from keygate.keycache import KeyCache
from keygate.store import SQLiteStore
from keygate.testing import context, run_request
from keygate.types import KeyRecord, Secret

from ..idp import AUDIENCE, ISSUER, SigningKey
from .common import Hook, decide
from .conftest import audit

PEPPER = Secret("pepper-for-the-guard-tests-0123456789")


def _ctx(authorization: str | None = None) -> Context:
    return context("GET", "/v1/models", headers={"authorization": authorization} if authorization else {})


def _add_key(store: SQLiteStore, name: str, team_id: str | None = None) -> tuple[str, KeyRecord]:
    issued = keys.issue(PEPPER)
    record = KeyRecord(keys.new_id(), name, issued.key_hash, issued.hint, time.time(), team_id=team_id)
    store.insert_key(record, audit("keys.create", record.id))
    return issued.secret, record


# -- bearer tokens and keygate keys --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer kg_abc", "kg_abc"),
        ("bearer   kg_abc  ", "kg_abc"),
        ("BEARER kg_abc", "kg_abc"),
        ("Bearer ", None),
        ("Bearer", None),
        ("Basic a2c6eA==", None),
        ("kg_abc", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(_ctx(header)) == token


def test_key_auth_finds_the_key_and_its_team(guard_store: SQLiteStore, key_cache: KeyCache) -> None:
    secret, record = _add_key(guard_store, "app", team_id="team_research")
    auth = KeyAuth(key_cache, PEPPER)
    ctx = _ctx(f"Bearer {secret}")
    assert decide(auth, ctx) is None
    assert ctx.key is not None and ctx.key.id == record.id and ctx.key.name == "app"
    assert ctx.team is not None and ctx.team.name == "research"
    solo_secret, _ = _add_key(guard_store, "solo")  # added after the cache was made: seen at once
    solo = _ctx(f"Bearer {solo_secret}")
    assert decide(auth, solo) is None and solo.key is not None and solo.team is None


def test_key_auth_refusals_never_echo_the_token(guard_store: SQLiteStore, key_cache: KeyCache) -> None:
    secret, record = _add_key(guard_store, "gone")
    guard_store.revoke_key(record.id, time.time(), audit("keys.revoke", record.id))
    auth = KeyAuth(key_cache, PEPPER)
    cases = [
        (None, MISSING, "missing_api_key"),
        ("Basic xyz", MISSING, "missing_api_key"),
        ("Bearer " + keys.generate(), UNKNOWN, "invalid_api_key"),  # well-formed, unknown
        ("Bearer kg_not-a-key-at-all", MALFORMED, "invalid_api_key"),
        ("Bearer " + secret[:-1] + ("A" if secret[-1] != "A" else "B"), MALFORMED, "invalid_api_key"),
        (f"Bearer {secret}", REVOKED, "revoked_api_key"),
    ]
    for header, expected, code in cases:
        ctx = _ctx(header)
        err = decide(auth, ctx)
        assert err is expected and isinstance(err, AuthenticationFailed) and err.code == code
        assert err.status == 401 and ctx.key is None
        assert "kg_" not in err.message.replace("Bearer kg_...", "")
        if header:
            assert header.split()[-1] not in err.message


def test_key_auth_needs_a_pepper(key_cache: KeyCache) -> None:
    with pytest.raises(ConfigError, match="pepper"):
        KeyAuth(key_cache, Secret(""))


# -- the team claim ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "team"),
    [
        ("research", "research"),
        ("read embedders write", "embedders"),  # OAuth scopes: the first naming a known team
        (["x", "team_research"], "team_research"),  # by id as well
        (["x", 5, "y"], "x"),  # none known: the first value (the guard then refuses it)
        ([5, None], None),
        ([], None),
        ("", None),
        (7, None),
        (None, None),
    ],
)
def test_claim_team(key_cache: KeyCache, value: Any, team: str | None) -> None:
    claims = {"groups": value} if value is not None else {}
    assert claim_team(claims, "groups", key_cache) == team
    assert claim_team({"groups": "research"}, None, key_cache) is None  # no claim configured


# -- Authenticate --------------------------------------------------------------------------------


@pytest.fixture
def signer() -> SigningKey:
    return SigningKey("static")


@pytest.fixture
def endpoint() -> Iterator[Hook]:
    hook = Hook(status=200, reply=b'{"active": true, "sub": "svc-a"}')
    yield hook
    hook.close()


def _methods(tmp_path: Path, cache: KeyCache, signer: SigningKey, endpoint: Hook, **on: bool) -> Authenticate:
    pem = signer.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    spec = {
        "jwt": {"issuer": ISSUER, "audience": AUDIENCE, "public_key_file": "idp.pem", "team_claim": "team"},
        "introspection": {"url": endpoint.url, "client_id": "${ID}", "client_secret": "${SECRET}"},
    }
    settings = parse_auth(spec, {"ID": "keygate", "SECRET": "s3cret"}, tmp_path)
    assert settings.jwt is not None and settings.introspection is not None
    return Authenticate(
        cache,
        KeyAuth(cache, PEPPER) if on.get("keys", True) else None,
        JWTVerifier(settings.jwt, cache) if on.get("jwt", True) else None,
        Introspector(settings.introspection, cache) if on.get("introspection", True) else None,
    )


def _run(auth: Authenticate, *headers: str | None) -> list[tuple[object, Context]]:
    async def run() -> list[tuple[object, Context]]:
        await auth.start()
        try:
            out = []
            for header in headers:
                ctx = _ctx(header)
                out.append((await run_request(auth, ctx), ctx))
            return out
        finally:
            await auth.stop()

    return asyncio.run(run())


def test_the_token_shape_picks_the_method(
    tmp_path: Path, guard_store: SQLiteStore, key_cache: KeyCache, signer: SigningKey, endpoint: Hook
) -> None:
    secret, record = _add_key(guard_store, "app")
    auth = _methods(tmp_path, key_cache, signer, endpoint)
    (key, k), (token, t), (opaque, o), (missing, _) = _run(
        auth,
        f"Bearer {secret}",
        f"Bearer {signer.sign({'team': 'research'}, sub='alice')}",
        "Bearer opaque-1",
        None,
    )
    assert key is None and k.key is not None and k.key.id == record.id
    assert (
        token is None
        and t.key is not None
        and (t.key.id, t.key.name, t.key.hint) == ("jwt:alice", "alice", "jwt")
    )
    assert t.key.key_hash == "" and t.key.policy == {} and t.team is not None and t.team.name == "research"
    assert opaque is None and o.key is not None and o.key.id == "oauth:svc-a" and o.key.hint == "oauth"
    assert missing is MISSING
    assert len(endpoint.bodies) == 1  # only the opaque token was introspected


def test_a_token_principal_gets_its_team(
    tmp_path: Path, key_cache: KeyCache, signer: SigningKey, endpoint: Hook
) -> None:
    auth = _methods(tmp_path, key_cache, signer, endpoint)
    long_subject = "s" * 300
    (ok, ctx), (unknown, nobody), (_, long) = _run(
        auth,
        f"Bearer {signer.sign({'team': 'research'})}",
        f"Bearer {signer.sign({'team': 'no-such-team'})}",
        f"Bearer {signer.sign({'team': 'research'}, sub=long_subject)}",
    )
    assert ok is None and ctx.team is not None and ctx.team.id == "team_research"
    assert ctx.key is not None and ctx.key.team_id == "team_research"
    assert isinstance(unknown, PermissionDenied) and unknown.status == 403 and unknown.code == "unknown_team"
    assert unknown.message == "The token's team is not known to this gateway." and nobody.key is None
    assert long.key is not None and long.key.id == "jwt:" + "s" * 200  # the subject, cut to 200


def test_a_verifier_refusal_is_the_answer(
    tmp_path: Path, key_cache: KeyCache, signer: SigningKey, endpoint: Hook
) -> None:
    auth = _methods(tmp_path, key_cache, signer, endpoint)
    endpoint.reply = b'{"active": false}'
    now = int(time.time())
    (expired, _), (inactive, _) = _run(
        auth, f"Bearer {signer.sign(exp=now - 600, iat=now - 900)}", "Bearer opaque-2"
    )
    assert isinstance(expired, AuthenticationFailed) and expired.code == "expired_token"
    assert (
        isinstance(inactive, AuthenticationFailed) and inactive.message == "Invalid or expired access token."
    )


def test_methods_that_are_off_are_not_tried(
    tmp_path: Path, guard_store: SQLiteStore, key_cache: KeyCache, signer: SigningKey, endpoint: Hook
) -> None:
    secret, _ = _add_key(guard_store, "app")
    jwt_token = signer.sign({"team": "research"})  # (team_claim is set: a token must name one)
    too_long = "x" * 4097
    no_keys = _methods(tmp_path, key_cache, signer, endpoint, keys=False, introspection=False)
    found = [err for err, _ in _run(no_keys, f"Bearer {secret}", "Bearer opaque", f"Bearer {jwt_token}")]
    assert found[:2] == [NO_METHOD, NO_METHOD] and found[2] is None
    assert NO_METHOD.message == "This kind of credential is not accepted here."
    keys_only_tokens = _methods(tmp_path, key_cache, signer, endpoint, jwt=False, introspection=False)
    found = [err for err, _ in _run(keys_only_tokens, "Bearer opaque", f"Bearer {jwt_token}")]
    assert found == [MALFORMED, MALFORMED]
    # Without a JWT verifier a JWT-shaped token is an opaque one; a huge one is never sent off.
    introspect_only = _methods(tmp_path, key_cache, signer, endpoint, keys=False, jwt=False)
    found = [err for err, _ in _run(introspect_only, f"Bearer {jwt_token}", f"Bearer {too_long}")]
    assert found == [None, NO_METHOD]
    assert [b.count(b"token=") for b in endpoint.bodies] == [1]
    with_keys = _methods(tmp_path, key_cache, signer, endpoint, jwt=False)
    assert [err for err, _ in _run(with_keys, f"Bearer {too_long}")] == [MALFORMED]
    assert len(endpoint.bodies) == 1


def _settings_file(tmp_path: Path, auth: dict[str, Any] | None = None) -> Any:
    config: dict[str, Any] = {"database_url": "sqlite:///k.db"}
    if auth is not None:
        config["auth"] = auth
    (tmp_path / "keygate.yaml").write_text(yaml.safe_dump(config))
    env = {"KEYGATE_PEPPER": PEPPER.reveal(), "OPENAI_API_KEY": "sk-test", "ID": "keygate", "SECRET": "s"}
    return load_settings(tmp_path / "keygate.yaml", env)


def test_the_configuration_builds_the_plain_guard_for_keys_alone(
    tmp_path: Path, key_cache: KeyCache, signer: SigningKey
) -> None:
    assert type(build_authenticate(_settings_file(tmp_path), key_cache)) is KeyAuth
    pem = signer.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    jwt_spec = {"issuer": ISSUER, "audience": AUDIENCE, "public_key_file": "idp.pem"}
    both = build_authenticate(_settings_file(tmp_path, {"jwt": jwt_spec}), key_cache)
    assert type(both) is Authenticate
    oauth = {"url": "https://idp.example/introspect", "client_id": "${ID}", "client_secret": "${SECRET}"}
    tokens_only = build_authenticate(
        _settings_file(tmp_path, {"keys": False, "jwt": jwt_spec, "introspection": oauth}), key_cache
    )
    assert type(tokens_only) is Authenticate
    # Keys off: a keygate key gets the same answer as any credential of a kind not accepted.
    err = decide(tokens_only, _ctx("Bearer " + keys.generate()))
    assert err is NO_METHOD
