from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate import keys
from keygate.errors import ConfigError
from keygate.types import Secret

PEPPER = Secret("pepper-for-tests-0123456789abcdef")


def test_generated_keys_are_well_formed_and_distinct() -> None:
    made = {keys.generate() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        assert key.startswith("kg_") and len(key) == 3 + 32 + 6
        assert keys.is_well_formed(key)
        assert not keys.is_well_formed(key, prefix=keys.ADMIN_PREFIX)
    admin = keys.generate(keys.ADMIN_PREFIX)
    assert keys.is_well_formed(admin, prefix=keys.ADMIN_PREFIX) and not keys.is_well_formed(admin)


bodies = st.text(alphabet=keys.ALPHABET, min_size=keys.BODY_LEN, max_size=keys.BODY_LEN)


def make_key(body: str) -> str:
    # Built from hypothesis-drawn data (not keys.generate()), so every example replays exactly.
    return keys.CLIENT_PREFIX + body + keys._checksum(keys.CLIENT_PREFIX, body)


@given(bodies, st.data())
def test_any_single_character_typo_is_detected(body: str, data: st.DataObject) -> None:
    key = make_key(body)
    assert keys.is_well_formed(key)
    pos = data.draw(st.integers(min_value=3, max_value=len(key) - 1))
    replacement = data.draw(st.sampled_from([c for c in keys.ALPHABET if c != key[pos]]))
    assert not keys.is_well_formed(key[:pos] + replacement + key[pos + 1 :])


@given(bodies, st.data())
def test_swapping_two_adjacent_characters_is_detected(body: str, data: st.DataObject) -> None:
    key = make_key(body)
    pos = data.draw(st.integers(min_value=3, max_value=len(key) - 2))
    swapped = key[:pos] + key[pos + 1] + key[pos] + key[pos + 2 :]
    assert swapped == key or not keys.is_well_formed(swapped)


@given(st.text(alphabet=string.printable, max_size=60))
def test_random_strings_are_rejected(text: str) -> None:
    assert not keys.is_well_formed(text)


def test_hash_is_peppered_hmac() -> None:
    key = keys.generate()
    h = keys.hash_key(PEPPER, key)
    assert len(h) == 64 and key not in h
    assert h == keys.hash_key(PEPPER, key)
    assert h != keys.hash_key(Secret("another-pepper-0123456789abcdef"), key)


def test_hint_shows_prefix_and_last_four_only() -> None:
    key = keys.generate()
    assert keys.hint(key) == f"kg_...{key[-4:]}"


def test_secret_never_prints_itself() -> None:
    s = Secret("sk-very-secret")
    assert "sk-very-secret" not in f"{s} {s!r} {[s]} { ({'k': s}) }"
    assert s.reveal() == "sk-very-secret"


def test_issue_needs_a_pepper_and_returns_what_may_be_stored() -> None:
    with pytest.raises(ConfigError, match="pepper"):
        keys.issue(Secret(""))
    issued = keys.issue(PEPPER)
    assert keys.is_well_formed(issued.secret)
    assert issued.key_hash == keys.hash_key(PEPPER, issued.secret) and issued.hint == keys.hint(issued.secret)
    admin = keys.issue(PEPPER, keys.ADMIN_PREFIX)
    assert keys.is_well_formed(admin.secret, prefix=keys.ADMIN_PREFIX) and admin.hint.startswith("kga_...")


def test_ids_name_their_kind_and_are_distinct() -> None:
    made = {keys.new_id("team") for _ in range(100)}
    assert len(made) == 100 and all(i.startswith("team_") and len(i) == 5 + 16 for i in made)
    assert keys.new_id().startswith("key_")


def test_a_trailing_newline_is_not_a_well_formed_key() -> None:
    key = keys.generate()
    assert keys.is_well_formed(key)
    assert not keys.is_well_formed(key + "\n")  # (a `$` anchor alone matches before it)
