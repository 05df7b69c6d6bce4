"""``keygate.vault``: envelope encryption of stored upstream keys, bound to their row, under a
keyring of the current and previous master keys."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from keygate.errors import ConfigError
from keygate.types import Secret
from keygate.vault import (
    Keyring,
    Sealed,
    VaultError,
    fingerprint,
    generate_master_key,
    kek_id,
    parse_master_key,
)

SECRET = "sk-proj-vault-test-secret-0123456789"
A, B = b"a" * 32, b"b" * 32


def test_master_keys_in_base64_or_hex() -> None:
    made = generate_master_key()
    raw = parse_master_key(Secret(made))
    assert len(raw) == 32 and raw != parse_master_key(Secret(generate_master_key()))
    assert parse_master_key(Secret(raw.hex())) == raw
    assert parse_master_key(Secret(f"  {made.rstrip('=')}\n")) == raw  # padding and blanks are optional
    assert parse_master_key(Secret(base64.urlsafe_b64encode(A).decode())) == A
    for bad in ("", "short", base64.urlsafe_b64encode(b"x" * 31).decode(), "g" * 64, "!" * 44):
        with pytest.raises(ConfigError, match=r"^master_key_file: expected 32 random bytes"):
            parse_master_key(Secret(bad), "master_key_file")


def test_ids_and_fingerprints_are_not_secret_and_stable() -> None:
    assert kek_id(A) == kek_id(A) != kek_id(B) and kek_id(A).startswith("mk_") and len(kek_id(A)) == 15
    assert fingerprint(SECRET) == fingerprint(SECRET) != fingerprint(SECRET + "x")
    assert fingerprint(SECRET).startswith("sha256:") and SECRET not in fingerprint(SECRET)


def test_seal_and_open() -> None:
    ring = Keyring(A)
    sealed = ring.seal("openai", "uk_1", SECRET)
    assert sealed.kek_id == kek_id(A) and ring.current_id == kek_id(A) and ring.knows(kek_id(A))
    assert len(sealed.wrapped_key) == 12 + 32 + 16 and SECRET.encode() not in sealed.ciphertext
    assert ring.open("openai", "uk_1", sealed) == Secret(SECRET)
    again = ring.seal("openai", "uk_1", SECRET)
    assert (
        again.wrapped_key != sealed.wrapped_key and again.ciphertext != sealed.ciphertext
    )  # fresh keys and nonces


def test_a_sealed_key_opens_only_on_its_own_row() -> None:
    ring = Keyring(A)
    sealed = ring.seal("openai", "uk_1", SECRET)
    for upstream, key_id in (("azure", "uk_1"), ("openai", "uk_2"), ("openai\x00uk", "1")):
        with pytest.raises(VaultError, match="does not open"):
            ring.open(upstream, key_id, sealed)
    other = ring.seal("openai", "uk_2", "sk-proj-another-secret-999999")
    swapped = Sealed(sealed.kek_id, sealed.wrapped_key, other.ciphertext)  # ciphertext moved to another row
    with pytest.raises(VaultError, match="tampered or swapped row") as info:
        ring.open("openai", "uk_1", swapped)
    assert SECRET not in info.value.message and info.value.code == "vault_error"


def test_tampering_and_the_wrong_master_key_are_refused() -> None:
    sealed = Keyring(A).seal("openai", "uk_1", SECRET)
    flip = bytes([sealed.wrapped_key[-1] ^ 1])
    with pytest.raises(VaultError, match="wrong master key or tampered row"):
        Keyring(A).open("openai", "uk_1", replace(sealed, wrapped_key=sealed.wrapped_key[:-1] + flip))
    with pytest.raises(VaultError, match="tampered or swapped"):
        Keyring(A).open("openai", "uk_1", replace(sealed, ciphertext=sealed.ciphertext[:-1] + b"\x00"))
    with pytest.raises(VaultError, match=f"wrapped by master key {kek_id(A)}, which is not configured"):
        Keyring(B).open("openai", "uk_1", sealed)
    with pytest.raises(VaultError, match="wrong master key"):  # a key claiming another's id
        Keyring(B).open("openai", "uk_1", replace(sealed, kek_id=kek_id(B)))


def test_rewrap_moves_a_row_to_the_current_key_without_touching_the_ciphertext() -> None:
    sealed = Keyring(A).seal("openai", "uk_1", SECRET)
    ring = Keyring(B, A, None)
    assert ring.knows(kek_id(A)) and ring.knows(kek_id(B)) and ring.current_id == kek_id(B)
    assert ring.open("openai", "uk_1", sealed).reveal() == SECRET  # the previous key still opens
    moved = ring.rewrap("openai", "uk_1", sealed)
    assert (
        moved.kek_id == kek_id(B)
        and moved.ciphertext == sealed.ciphertext
        and moved.wrapped_key != sealed.wrapped_key
    )
    assert Keyring(B).open("openai", "uk_1", moved).reveal() == SECRET  # B alone now
    assert ring.rewrap("openai", "uk_1", moved) is moved  # already current
    with pytest.raises(VaultError):
        ring.rewrap("azure", "uk_1", sealed)  # the row binding holds for the wrapped key too
    with pytest.raises(VaultError, match="not configured"):
        Keyring(B).rewrap("openai", "uk_1", sealed)


def test_keyring_from_the_configured_secrets() -> None:
    assert Keyring.from_secrets(None) is None and Keyring.from_secrets(None, Secret(A.hex())) is None
    ring = Keyring.from_secrets(Secret(B.hex()), Secret(A.hex()))
    assert ring is not None and ring.current_id == kek_id(B) and ring.knows(kek_id(A))
    assert Keyring.from_secrets(Secret(A.hex())) is not None
    with pytest.raises(ConfigError, match=r"^previous master key:"):
        Keyring.from_secrets(Secret(A.hex()), Secret("nope"))
    with pytest.raises(ConfigError, match=r"^master key:"):
        Keyring.from_secrets(Secret("nope"))
    same = Keyring(A, A)
    assert same.current_id == kek_id(A)
