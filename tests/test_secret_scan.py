"""keygate.secret_scan: each kind found (positive) and not found where it only looks alike
(negative), the prefilter's anchors, masking, and both anchor searches (Hyperscan and the fallback)
agreeing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keygate import keys, secret_scan
from keygate.secret_scan import (
    ALL_ANCHORS,
    ANCHORS,
    KINDS,
    AnchorSearch,
    escapes_ascii,
    find_pii,
    find_secrets,
    mask,
    scan,
)

SECRETS: dict[str, list[str]] = {
    "openai_key": [
        "sk-" + "T3BlbkFJ" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "sk-proj-" + "Xb3T9qLm2Vn8Rw4Kc7Yp1Hd6Fs0Jg5Ze" * 4 + "_A1b2",
        "sk-svcacct-" + "Qm4Zp8Lx2Nv6Rt0Ws3Yk7Hb1Jd5Fg9Ce" * 3,
    ],
    "anthropic_key": [
        "sk-ant-api03-" + "Zx8Cv7Bn6Mm5Ll4Kk3Jj2Hh1Gg0Ff9Dd8Ss7Aa6Qq5Ww4Ee3Rr2Tt1Yy0Uu9Ii8Oo7Pp6" + "-AA"
    ],
    "aws_access_key": ["AKIAZ7QX3KJ2VN4RTB6M", "ASIAY34FZKBOKMUTVV7A"],
    "gcp_api_key": ["AIza" + "SyD4-9x_Kq3LmNb7VcR2tYu8WeIo0PaSdFg"],
    "azure_key": [
        "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
        + "A1b2C3d4" * 11
        + "==;EndpointSuffix=x",
        "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey="
        + "Qk9vTm9Qc2VjcmV0S2V5VmFsdWUxMjM0NTY3ODkwYWI=",
    ],
    "github_token": [
        "ghp_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6",
        "gho_" + "16C7e42F292c6912E7710c838347Ae178B4a",
        "ghs_" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp9Oo8",
        "ghu_" + "Nn7Mm6Ll5Kk4Jj3Ii2Hh1Gg0Ff9Ee8Dd7Cc6",
        "github_pat_11ABCDEFG0"
        + "abcdefghijklmnopqrstuv_"
        + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0U1v2W3x4Y5z6A7b8C9d",
    ],
    "slack_token": ["xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx", "xoxp-12345-67890-abcdef12345"],
    "slack_webhook": ["https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX"],
    "stripe_key": ["sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "rk_live_" + "51H8xYzAbCdEfGhIjKlMnOp"],
    "private_key": [
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7b2X\nq9Zr==\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF7n2WcBCADQ\n-----END PGP PRIVATE KEY BLOCK-----",
    ],
    "jwt": [
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTc5OTk5OTk5OX0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    ],
    "keygate_key": [keys.generate()],
    "keygate_admin_token": [keys.generate(keys.ADMIN_PREFIX)],
}

AWS_SECRET = "q8Vd2kR7bX/pL4mN9sT1wY6zC3fH5jA0eG+uK2oQ"

NOT_SECRETS = [
    "Our task-runner and risk-based alerting; desk-1203; ask-me-anything-about-anything-at-all",
    "sk-learn-compatible-estimators-for-everyone",  # no digits, no capitals: a phrase, not a key
    "sk-" + "a" * 40,
    "the AKIA prefix marks AWS access keys; AKIA1234 is too short",
    "xAKIAZ7QX3KJ2VN4RTB6M",  # part of a longer token
    "base64: iVBORw0KGgo+AIzaSyD4-9x_Kq3LmNb7VcR2tYu8WeIo0PaSdFg/AAAA",  # inside base64 data
    "ghp_short and gho_ and github_pat_",
    "eyJhbGciOiJIUzI1NiJ9 is only a header",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n-----END CERTIFICATE-----",
    "kg_per_m3 = 1000; weight_kg_" + "a" * 38,
    "kg_" + "A1b2C3d4E5" * 3 + "abcdefgh",  # the shape of a keygate key, but its checksum is wrong
    "xox is a game; xoxo, the team",
    "the secret is patience; aws_secret_access_key = ${AWS_SECRET}",
    "AccountKey=<your key here>",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc is a Stripe test key: not a live one",
]


@pytest.mark.parametrize(
    ("kind", "secret"),
    [pytest.param(k, s, id=f"{k}-{i}") for k, ss in SECRETS.items() for i, s in enumerate(ss)],
)
def test_each_secret_kind_is_found_in_prose(kind: str, secret: str) -> None:
    text = f'Here is my config: "{secret}" - why does it fail?'
    found = scan(text)
    assert [f.kind for f in found] == [kind]
    assert secret_scan.ANCHORS  # and an anchor of it is in the text, so the prefilter lets it through
    assert AnchorSearch()(text.encode()) and AnchorSearch(use_library=False)(text.encode())
    (f,) = found
    assert text[f.start : f.end] in secret or secret in text[f.start : f.end]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_lookalikes_are_not_secrets(text: str) -> None:
    assert scan(text) == []


def test_an_aws_secret_key_by_its_label_or_next_to_an_access_key_id() -> None:
    for text in (
        f"aws_secret_access_key = {AWS_SECRET}",
        f'"SecretAccessKey": "{AWS_SECRET}"',
        f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
    ):
        assert [(f.kind, text[f.start : f.end]) for f in scan(text)] == [("aws_secret_key", AWS_SECRET)]
    text = f"id AKIAZ7QX3KJ2VN4RTB6M\nsecret {AWS_SECRET}"
    assert [f.kind for f in scan(text)] == ["aws_access_key", "aws_secret_key"]
    assert scan(f"a 40-character run far from any key id: {AWS_SECRET}") == []
    twice = f"AKIAZ7QX3KJ2VN4RTB6M {AWS_SECRET}, again: {AWS_SECRET}"
    assert mask(twice, scan(twice)) == (
        "[REDACTED:aws_access_key] [REDACTED:aws_secret_key], again: [REDACTED:aws_secret_key]"
    )


def test_a_private_key_is_masked_whole_and_the_text_after_it_kept() -> None:
    pem = SECRETS["private_key"][0]
    text = f"my key:\n{pem}\nthanks!"
    assert mask(text, scan(text)) == "my key:\n[REDACTED:private_key]\nthanks!"


def test_mask_replaces_each_finding_and_keeps_the_rest() -> None:
    aws, gh = SECRETS["aws_access_key"][0], SECRETS["github_token"][0]
    text = f"a {aws} b {gh} c"
    assert mask(text, scan(text)) == "a [REDACTED:aws_access_key] b [REDACTED:github_token] c"
    assert mask("nothing", []) == "nothing"


def test_every_kind_has_a_description_and_every_rule_an_anchor() -> None:
    assert set(SECRETS) | {"aws_secret_key"} == set(secret_scan.SECRET_KINDS)
    assert all(KINDS[k].startswith(("a ", "an ")) for k in KINDS)
    for anchor, _, _ in secret_scan._RULES:
        assert any(anchor.encode().startswith(a) for a in ANCHORS)


def test_both_anchor_searches_lead_to_the_same_findings() -> None:
    fast, plain = AnchorSearch(), AnchorSearch(use_library=False)
    assert fast.library and not plain.library  # Hyperscan is installed here (Linux x86_64)
    samples = [s for ss in SECRETS.values() for s in ss] + NOT_SECRETS + ["", "plain words only"]
    samples += [f"aws_secret_access_key = {AWS_SECRET}", f'"SecretAccessKey": "{AWS_SECRET}"']
    for text in samples:
        data = text.encode()
        assert find_secrets(text, fast(data)) == find_secrets(text, plain(data)) == find_secrets(text), text
    # Hyperscan looks for each anchor's shape, so words that merely hold an anchor cost nothing
    assert fast(b"our task-runner, the high road, risk-based") == frozenset()
    assert plain(b"our task-runner, the high road, risk-based") != frozenset()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_scanning_anything_is_safe_and_findings_are_ordered(text: str) -> None:
    found = scan(text, True, True)
    assert all(0 <= f.start < f.end <= len(text) for f in found)
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))
    assert find_secrets(text, ALL_ANCHORS) == find_secrets(text)
    assert "[REDACTED:" in mask(text, found) or not found


def test_escaped_ascii_in_raw_json_is_noticed() -> None:
    assert escapes_ascii(b'{"a":"\\u0041KIA"}')
    assert escapes_ascii(b'{"a":"\\u005f"}')
    assert not escapes_ascii(b'{"a":"caf\\u00e9 \\u003c b \\u0026"}')  # non-ASCII, "<", "&": no anchor hides
    assert not escapes_ascii(b'{"a":"plain"}')
    for search in (AnchorSearch(), AnchorSearch(use_library=False)):  # the guard's one pass
        assert search.in_json(b'{"a":"\\u0041KIA"}') == ALL_ANCHORS
        assert search.in_json(b'{"a":"caf\\u00e9 AKIAZ7QX3KJ2VN4RTB6M"}') == {ANCHORS.index(b"AKIA")}
        assert search.in_json(b'{"a":"caf\\u00e9"}') == frozenset()


# --- personal data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("card_number", "4539 1488 0343 6467"),
        ("card_number", "4539-1488-0343-6467"),
        ("card_number", "4539148803436467"),
        ("card_number", "3714 496353 98431"),  # Amex, 4-6-5
        ("card_number", "5555555555554444"),
        ("iban", "DE89 3704 0044 0532 0130 00"),
        ("iban", "GB82WEST12345698765432"),
        ("iban", "FR1420041010050500013M02606"),
        ("email", "jane.doe@acme-corp.de"),
        ("email", "first+tag@mail.acme.co.uk"),
        ("phone", "+49 30 12345678"),
        ("phone", "+1 (415) 555-2671"),
        ("phone", "+442071838750"),
    ],
)
def test_each_kind_of_personal_data_is_found(kind: str, value: str) -> None:
    text = f"Contact: {value}, thanks."
    found = find_pii(text)
    assert [(f.kind, text[f.start : f.end]) for f in found] == [(kind, value)]


@pytest.mark.parametrize(
    "text",
    [
        "4539 1488 0343 6468",  # fails Luhn
        "order 1234567890123456 shipped",  # no card network issues 12..., fails Luhn too
        "timestamp 1700000000000000000",  # 19 digits, not a card prefix
        "a 25-digit id 4539148803436467000000000",
        "version 2026-03-14 10:42:00 and 3.14159265358979",
        "DE89 3704 0044 0532 0130 01",  # wrong IBAN check digits
        "SHA256 AB12 is not an IBAN",
        "write to bob@example.com or alice@test.test",  # documentation domains
        "@decorator and user@localhost and npm @scope/pkg",
        "call 030 1234567 (no international prefix)",
        "1e+12345678 and x+12345678 and +12",
    ],
)
def test_personal_data_lookalikes_are_not_found(text: str) -> None:
    assert find_pii(text) == []


def test_pii_positions_are_right_with_non_ascii_text_before() -> None:
    text = "Grüße, ich bin erreichbar unter jörg@müller-bau.de? nein: joerg@mueller-bau.de"
    found = find_pii(text)
    assert [text[f.start : f.end] for f in found] == ["joerg@mueller-bau.de"]
