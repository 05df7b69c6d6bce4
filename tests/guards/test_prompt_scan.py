"""The prompt scan (guards/prompt_scan.py): secrets and personal data in request bodies are refused,
masked or recorded before forwarding, per key or team policy over the gateway's default. In process
for the guard's decisions, then through a real gateway with the openai SDK (and httpx for raw and
multipart bodies), checking what the mock upstream received and what the gateway wrote."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from keygate import keys
from keygate.errors import InvalidRequest
from keygate.guards.prompt_scan import PromptScan
from keygate.ops.policy import validate_policy
from keygate.testing import MockUpstream, context, key_record
from keygate.types import Team

from ..helpers import Gateway, assert_no_secret_written
from .common import decide, logged

# Realistic credentials of each shape (made up: none of them was ever issued).
AWS_ID = "AKIAZ7QX3KJ2VN4RTB6M"
AWS_SECRET = "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"
OPENAI_KEY = "sk-proj-" + "Xb3T9qLm2Vn8Rw4Kc7Yp1Hd6Fs0Jg5Ze" * 4
CARD = "4539 1488 0343 6467"  # Luhn-valid Visa test number
CARD_BAD = "4539 1488 0343 6468"  # the same digits, Luhn-invalid

PROSE = (
    "Our task-runner retries with exponential backoff; risk-based alerting fires during deploys. "
    "Order 4471 failed at 10:42 on 2026-03-14 with status 503, ticket DESK-1203 has the logs. "
    "The secret to a good retry policy is jitter. See RFC 9110 section 15.6.4, call me at 10 am."
)
CODE = """import os, hashlib
API_KEY = os.environ["OPENAI_API_KEY"]  # never hard-code it
def token_for(user_id: int) -> str:
    digest = hashlib.sha256(f"{user_id}:{SALT}".encode()).hexdigest()
    return "tok_" + digest[:32]
# sk-learn-compatible estimators, the eyJ prefix of a JWT header, kg_per_m3 = 1000
matrix = [[1234, 5678, 9012, 3456], [7890, 1234, 5678, 9012]]
"""


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def _guard(secrets: str = "block", pii: str = "off") -> PromptScan:
    return PromptScan(secrets, pii)


# --- in process: the decisions ---------------------------------------------------------------------


def test_a_secret_is_refused_with_a_code_naming_the_kind_never_the_match() -> None:
    ctx = context(json=_chat(f"why does {AWS_ID} get AccessDenied?"), key=key_record("key_a"))
    with logged("keygate.alert") as records:
        err = decide(_guard(), ctx)
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert err.code == "secret_in_prompt" and "an AWS access key" in err.message
    assert AWS_ID not in err.message
    (alert,) = records
    fields = alert.__dict__
    assert (fields["alert"], fields["action"], fields["key_id"], fields["route"]) == (
        "prompt_scan_finding",
        "block",
        "key_a",
        "chat.completions",
    )
    assert fields["kinds"] == {"aws_access_key": 1} and fields["count"] == 1
    assert AWS_ID not in alert.getMessage() and AWS_ID not in repr(fields)


def test_mask_replaces_each_match_in_the_json_and_the_body_alike() -> None:
    body = _chat(f"key {OPENAI_KEY} and\n{AWS_ID} / {AWS_SECRET}", metadata={"note": f"again {OPENAI_KEY}"})
    ctx = context(json=body)
    assert decide(_guard("mask"), ctx) is None
    sent = orjson.loads(ctx.body)
    assert sent == ctx.json
    assert sent["messages"][0]["content"] == (
        "key [REDACTED:openai_key] and\n[REDACTED:aws_access_key] / [REDACTED:aws_secret_key]"
    )
    assert sent["metadata"]["note"] == "again [REDACTED:openai_key]"
    assert sent["model"] == "gpt-4o-mini" and ctx.model == "gpt-4o-mini"


def test_log_forwards_unchanged_and_off_does_not_look() -> None:
    body = _chat(f"here: {OPENAI_KEY}")
    ctx = context(json=body)
    raw = ctx.body
    with logged("keygate.alert") as records:
        assert decide(_guard("log"), ctx) is None
    assert ctx.body == raw and [r.__dict__["action"] for r in records] == ["log"]
    with logged("keygate.alert") as records:
        assert decide(_guard("off"), context(json=body)) is None
    assert records == []


def test_the_stricter_of_key_and_team_wins_and_either_replaces_the_default() -> None:
    body = _chat(f"here: {OPENAI_KEY}")
    team = Team("team_t", "t", 0.0, {"prompt_scan": {"secrets": "block"}})
    relaxed = key_record("k", {"prompt_scan": {"secrets": "log"}})
    assert isinstance(decide(_guard("mask"), context(json=body, key=relaxed, team=team)), InvalidRequest)
    assert decide(_guard("block"), context(json=body, key=relaxed)) is None  # the key's own rule
    strict = key_record("k", {"prompt_scan": {"secrets": "block"}})
    loose_team = Team("team_t", "t", 0.0, {"prompt_scan": {"secrets": "off"}})
    assert isinstance(decide(_guard("off"), context(json=body, key=strict, team=loose_team)), InvalidRequest)


def test_an_escaped_ascii_letter_does_not_hide_a_secret() -> None:
    raw = orjson.dumps(_chat("x")).replace(b'"x"', b'"key \\u0041' + AWS_ID[1:].encode() + b'"')
    ctx = context(body=raw)
    ctx.body, ctx.json = raw, orjson.loads(raw)  # as the body guard reads it
    err = decide(_guard(), ctx)
    assert isinstance(err, InvalidRequest) and err.code == "secret_in_prompt"


def test_inline_files_are_not_scanned() -> None:
    data_url = "data:image/png;base64," + AWS_ID * 3
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}]}],
    }
    assert decide(_guard(), context(json=body)) is None


@pytest.mark.parametrize("text", [PROSE, CODE, PROSE + "\n" + CODE])
def test_ordinary_prose_and_code_pass_with_everything_on(text: str) -> None:
    with logged("keygate.alert") as records:
        assert decide(_guard("block", "block"), context(json=_chat(text))) is None
    assert records == []


# --- through a real gateway -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("prompt-scan"), upstream.url) as g:
        yield g


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def _audit(gw: Gateway, action: str, target: str) -> tuple[str, str, str, dict[str, Any]]:
    """The gateway's newest audit row of ``action`` about ``target`` (a key id): actor, origin,
    target, details, waiting for the flush. (The gateway serves the whole module, so rows of the
    same action about other keys are there already.)"""
    deadline = time.monotonic() + 5
    while True:
        with sqlite3.connect(gw.settings().database_path) as conn:
            rows = conn.execute(
                "SELECT actor, origin, target, details FROM audit WHERE action = ? AND target = ? ORDER BY id",
                (action, target),
            ).fetchall()
        if rows:
            actor, origin, about, details = rows[-1]
            return actor, origin, about, json.loads(details)
        if time.monotonic() > deadline:
            raise AssertionError(f"no {action} audit row about {target}")
        time.sleep(0.02)


def test_block_answers_400_in_openai_shape_and_writes_no_secret_anywhere(
    gw: Gateway, mock: MockUpstream, records: list[Any]
) -> None:
    key = gw.create_key("blocked")
    client = sdk(gw, key["key"])
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "user", "content": f"aws_access_key_id={AWS_ID}\naws_secret_access_key={AWS_SECRET}"}
            ],
        )
    assert exc.value.code == "secret_in_prompt"
    assert "an AWS access key" in exc.value.message
    assert AWS_ID not in exc.value.response.text and AWS_SECRET not in exc.value.response.text
    assert mock.requests == []  # nothing reached the upstream
    (actor, origin, target, details) = _audit(gw, "prompt_scan.block", key["id"])
    assert actor == target == key["id"] and origin == "127.0.0.1"
    assert (
        details["kinds"] == {"aws_access_key": 1, "aws_secret_key": 1}
        and details["route"] == "chat.completions"
    )
    alerts = [r for r in records if getattr(r, "alert", None) == "prompt_scan_finding"]
    assert [a.action for a in alerts] == ["block"] and alerts[0].key_id == key["id"]
    logged_text = "\n".join(r.getMessage() + repr(r.__dict__) for r in records)
    assert AWS_ID not in logged_text and AWS_SECRET not in logged_text
    gw.stop()  # everything flushed: the database, the logs
    try:
        assert_no_secret_written(gw.written_files(), [AWS_ID, AWS_SECRET])
    finally:
        gw.start()


def test_mask_forwards_valid_json_without_the_secret(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("masked", "--prompt-secrets", "mask")
    gh = "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6"
    client = sdk(gw, key["key"])
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You review deploy scripts."},
            {"role": "user", "content": f'export GITHUB_TOKEN="{gh}"\nexport OPENAI_API_KEY={OPENAI_KEY}'},
        ],
    )
    (sent,) = mock.requests
    assert gh.encode() not in sent.body and OPENAI_KEY.encode() not in sent.body
    body = sent.json()  # valid JSON
    assert body["messages"][1]["content"] == (
        'export GITHUB_TOKEN="[REDACTED:github_token]"\nexport OPENAI_API_KEY=[REDACTED:openai_key]'
    )
    assert body["messages"][0]["content"] == "You review deploy scripts."
    assert int(sent.headers["content-length"]) == len(sent.body)
    (_, _, target, details) = _audit(gw, "prompt_scan.mask", key["id"])
    assert target == key["id"] and details["kinds"] == {"github_token": 1, "openai_key": 1}


def test_log_forwards_the_body_unchanged_and_records(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("logged", "--prompt-secrets", "log")
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----"
    sdk(gw, key["key"]).embeddings.create(model="text-embedding-3-small", input=[f"store this: {pem}"])
    (sent,) = mock.requests
    assert sent.json()["input"] == [f"store this: {pem}"]
    (_, _, target, details) = _audit(gw, "prompt_scan.log", key["id"])
    assert target == key["id"] and details == {
        "kinds": {"private_key": 1},
        "count": 1,
        "route": "embeddings",
        "team_id": None,
        "request_id": details["request_id"],
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/completions",
            {"model": "gpt-3.5-turbo-instruct", "prompt": "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"},
        ),
        (
            "/responses",
            {"model": "gpt-4o-mini", "input": "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"},
        ),
        (
            "/moderations",
            {"input": "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX"},
        ),
        (
            "/images/generations",
            {"model": "dall-e-3", "prompt": "AIza" + "SyD4-9x_Kq3LmNb7VcR2tYu8WeIo0PaSdFg"},
        ),
        ("/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "AccountKey=" + "A1b2C3d4" * 11}),
    ],
)
def test_every_json_route_is_scanned(
    gw: Gateway, mock: MockUpstream, path: str, body: dict[str, Any]
) -> None:
    key = gw.create_key("routes")["key"]
    answer = httpx.post(f"{gw.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "secret_in_prompt"
    assert mock.requests == []


def test_keygate_keys_and_jwts_in_a_prompt(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("own")["key"]
    other = keys.generate()
    admin = keys.generate(keys.ADMIN_PREFIX)
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5OTk5OTk5OX0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    client = sdk(gw, key)
    for secret, what in (
        (other, "a keygate API key"),
        (admin, "a keygate admin token"),
        (jwt, "a JSON Web Token"),
    ):
        with pytest.raises(openai.BadRequestError, match=what) as exc:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": secret}]
            )
        assert secret not in exc.value.response.text
    assert mock.requests == []


def test_team_policy_applies_to_its_keys(gw: Gateway, mock: MockUpstream) -> None:
    gw.cli("teams", "create", "agents", "--prompt-secrets", "mask")
    agent = gw.create_key("agent", "--team", "agents")
    key = agent["key"]
    sdk(gw, key).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": AWS_ID}])
    (sent,) = mock.requests
    assert sent.json()["messages"][0]["content"] == "[REDACTED:aws_access_key]"
    stricter = gw.create_key("agent-strict", "--team", "agents", "--prompt-secrets", "block")["key"]
    with pytest.raises(openai.BadRequestError, match="AWS"):
        sdk(gw, stricter).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": AWS_ID}]
        )
    (_, _, _, details) = _audit(gw, "prompt_scan.mask", agent["id"])
    assert details["team_id"] is not None


def test_pii_is_off_by_default_and_checked_when_enabled(gw: Gateway, mock: MockUpstream) -> None:
    plain = sdk(gw, gw.create_key("pii-default")["key"])
    plain.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"card {CARD}"}])
    assert len(mock.requests) == 1  # off: forwarded as it was
    assert mock.requests[0].json()["messages"][0]["content"] == f"card {CARD}"
    guarded = sdk(gw, gw.create_key("pii-on", "--prompt-pii", "block")["key"])
    with pytest.raises(openai.BadRequestError) as exc:
        guarded.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"card {CARD}"}]
        )
    assert exc.value.code == "pii_in_prompt" and "a payment card number" in exc.value.message
    assert CARD not in exc.value.response.text
    guarded.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"order {CARD_BAD}"}]
    )
    assert len(mock.requests) == 2  # the Luhn-invalid digits went through
    masked = sdk(gw, gw.create_key("pii-mask", "--prompt-pii", "mask")["key"])
    masked.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "write to jane.doe@acme-corp.de or call +49 30 12345678"}],
    )
    assert mock.requests[-1].json()["messages"][0]["content"] == (
        "write to [REDACTED:email] or call [REDACTED:phone]"
    )


def test_realistic_prose_and_code_pass_with_everything_on(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("strict", "--prompt-secrets", "block", "--prompt-pii", "block")["key"]
    sdk(gw, key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": PROSE}, {"role": "user", "content": CODE}],
    )
    assert len(mock.requests) == 1


def test_multipart_text_fields_are_scanned_and_masked(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("upload")["key"]
    files = {"file": ("a.wav", b"RIFF....WAVE" + AWS_ID.encode(), "audio/wav")}  # a file part is not text
    answer = httpx.post(
        f"{gw.url}/audio/transcriptions",
        data={"model": "whisper-1", "prompt": f"the speaker reads {AWS_ID} aloud"},
        files=files,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "secret_in_prompt"
    assert mock.requests == []
    masking = gw.create_key("upload-mask", "--prompt-secrets", "mask")["key"]
    answer = httpx.post(
        f"{gw.url}/audio/transcriptions",
        data={"model": "whisper-1", "prompt": f"the speaker reads {AWS_ID} aloud"},
        files=files,
        headers={"Authorization": f"Bearer {masking}"},
    )
    assert answer.status_code == 200, answer.text
    (sent,) = mock.requests
    assert b"the speaker reads [REDACTED:aws_access_key] aloud" in sent.body
    assert sent.body.count(AWS_ID.encode()) == 1  # only inside the uploaded file's bytes


def test_policy_field_is_validated(gw: Gateway) -> None:
    bad = gw.cli("keys", "create", "--name", "bad", "--prompt-secrets", "maybe", check=False)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr
    key = gw.create_key("updatable", "--prompt-secrets", "log")
    gw.cli("keys", "update", key["id"], "--prompt-pii", "mask")
    listed = json.loads(gw.cli("keys", "list", "--json").stdout)
    (found,) = [k for k in listed if k["id"] == key["id"]]
    assert found["policy"]["prompt_scan"] == {"secrets": "log", "pii": "mask"}
    gw.cli("keys", "update", key["id"], "--clear", "prompt_scan")
    listed = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert "prompt_scan" not in next(k for k in listed if k["id"] == key["id"])["policy"]


def test_the_gateway_default_is_a_setting(upstream: MockUpstream, mock: MockUpstream, tmp_path: Any) -> None:
    with Gateway(tmp_path, upstream.url, extra={"prompt_scan": {"secrets": "mask", "pii": "log"}}) as g:
        made = g.create_key("default")
        sdk(g, made["key"]).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"{AWS_ID} {CARD}"}]
        )
        (sent,) = mock.requests
        assert sent.json()["messages"][0]["content"] == f"[REDACTED:aws_access_key] {CARD}"
        (_, _, _, details) = _audit(g, "prompt_scan.mask", made["id"])
        assert details["kinds"] == {"aws_access_key": 1, "card_number": 1}


def test_the_policy_field_is_checked_before_it_is_stored() -> None:
    assert validate_policy({"prompt_scan": {"secrets": "mask"}}) == {"prompt_scan": {"secrets": "mask"}}
    assert (
        validate_policy({"prompt_scan": {"secrets": "off", "pii": "block"}})["prompt_scan"]["pii"] == "block"
    )
    for bad, message in (
        ({"secrets": "maybe"}, "expected one of block, mask, log, off"),
        ({"secret": "block"}, "unknown field"),
        ({}, "expected an object"),
        ("block", "expected an object"),
        ({"pii": True}, "expected one of"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            validate_policy({"prompt_scan": bad})
