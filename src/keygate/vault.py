"""Envelope encryption of stored upstream keys (AES-256-GCM, ``cryptography``).

Each secret gets its own random 256-bit data key. The secret is sealed with the data key; the
data key is wrapped by the master key. Both seals carry associated data naming the row
(upstream name and key id), so a ciphertext copied onto another row fails to open. The wrapped
data key records which master key wrapped it (``kek_id``, a short fingerprint of the master key),
which lets ``keygate master-key rotate`` re-wrap row by row and resume after an interruption.

::

    row = (kek_id, wrapped = nonce ‖ AESGCM(master).seal(dek, aad),
                   sealed  = nonce ‖ AESGCM(dek).seal(secret, aad))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ConfigError, KeygateError
from .types import Secret

_NONCE = 12


class VaultError(KeygateError):
    """A stored secret cannot be opened (wrong master key, or a tampered or swapped row)."""

    default_code = "vault_error"


@dataclass(frozen=True, slots=True)
class Sealed:
    kek_id: str
    wrapped_key: bytes
    ciphertext: bytes


def generate_master_key() -> str:
    """A new master key: 32 random bytes, urlsafe base64."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def parse_master_key(value: Secret, field_name: str = "master key") -> bytes:
    """Decode a master key (urlsafe base64 or 64 hex characters) into 32 bytes."""
    text = value.reveal().strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (ValueError, binascii.Error):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(
            f"{field_name}: expected 32 random bytes as urlsafe base64 or hex (keygate master-key generate)"
        )
    return raw


def kek_id(master: bytes) -> str:
    """A short, non-secret name for a master key (which key wrapped a row)."""
    return "mk_" + hashlib.sha256(b"keygate-kek-id:" + master).hexdigest()[:12]


def fingerprint(secret: str) -> str:
    """A non-secret fingerprint of an upstream key, for listings."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def _aad(upstream: str, key_id: str) -> bytes:
    return f"keygate/upstream-key/v1\x00{upstream}\x00{key_id}".encode()


class Keyring:
    """The current master key (which wraps), and older ones that still unwrap (during a rotation)."""

    def __init__(self, current: bytes, *previous: bytes | None) -> None:
        self._keys = {kek_id(current): current}
        for old in previous:
            if old is not None:
                self._keys.setdefault(kek_id(old), old)
        self.current_id = kek_id(current)

    @classmethod
    def from_secrets(cls, current: Secret | None, previous: Secret | None = None) -> Keyring | None:
        if current is None:
            return None
        prev = parse_master_key(previous, "previous master key") if previous else None
        return cls(parse_master_key(current, "master key"), prev)

    def knows(self, kid: str) -> bool:
        return kid in self._keys

    def seal(self, upstream: str, key_id: str, secret: str) -> Sealed:
        aad = _aad(upstream, key_id)
        dek = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(_NONCE), os.urandom(_NONCE)
        ciphertext = n1 + AESGCM(dek).encrypt(n1, secret.encode(), aad)
        wrapped = n2 + AESGCM(self._keys[self.current_id]).encrypt(n2, dek, aad)
        return Sealed(self.current_id, wrapped, ciphertext)

    def _unwrap(self, upstream: str, key_id: str, sealed: Sealed) -> bytes:
        master = self._keys.get(sealed.kek_id)
        if master is None:
            raise VaultError(
                f"upstream key {key_id} is wrapped by master key {sealed.kek_id}, which is not configured"
            )
        try:
            w = sealed.wrapped_key
            return AESGCM(master).decrypt(w[:_NONCE], w[_NONCE:], _aad(upstream, key_id))
        except InvalidTag:
            raise VaultError(
                f"upstream key {key_id} does not open: wrong master key or tampered row"
            ) from None

    def open(self, upstream: str, key_id: str, sealed: Sealed) -> Secret:
        dek = self._unwrap(upstream, key_id, sealed)
        c = sealed.ciphertext
        try:
            return Secret(AESGCM(dek).decrypt(c[:_NONCE], c[_NONCE:], _aad(upstream, key_id)).decode())
        except InvalidTag:
            raise VaultError(f"upstream key {key_id} does not open: tampered or swapped row") from None

    def rewrap(self, upstream: str, key_id: str, sealed: Sealed) -> Sealed:
        """The same data key, wrapped by the current master key (the ciphertext is unchanged)."""
        if sealed.kek_id == self.current_id:
            return sealed
        dek = self._unwrap(upstream, key_id, sealed)
        nonce = os.urandom(_NONCE)
        wrapped = nonce + AESGCM(self._keys[self.current_id]).encrypt(nonce, dek, _aad(upstream, key_id))
        return Sealed(self.current_id, wrapped, sealed.ciphertext)
