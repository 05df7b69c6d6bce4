"""Client key format and hashing.

A key looks like ``kg_<32 base62 chars><6 base62 chars>``: a recognisable prefix, 32 random
base62 characters (190 bits from :mod:`secrets`) and a CRC32 checksum of prefix and body, so a
typo or a secret scanner can tell a well-formed key without a database lookup. Admin tokens use
the same scheme with the ``kga_`` prefix.

Only ``HMAC-SHA256(pepper, key)`` is ever stored; the plaintext exists once, in the output of
the command that created it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from typing import Final

from .errors import ConfigError
from .types import Secret

CLIENT_PREFIX: Final = "kg_"
ADMIN_PREFIX: Final = "kga_"
ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LEN: Final = 32
CHECKSUM_LEN: Final = 6
_SHAPE = re.compile(rf"^(kga?_)([0-9A-Za-z]{{{BODY_LEN}}})([0-9A-Za-z]{{{CHECKSUM_LEN}}})\Z")


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _checksum(prefix: str, body: str) -> str:
    return _base62(zlib.crc32((prefix + body).encode()), CHECKSUM_LEN)


def generate(prefix: str = CLIENT_PREFIX) -> str:
    """A new random key with the given prefix and its checksum."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LEN))
    return prefix + body + _checksum(prefix, body)


def is_well_formed(key: str, prefix: str = CLIENT_PREFIX) -> bool:
    """True if ``key`` has the right prefix, length, alphabet and checksum."""
    m = _SHAPE.match(key)
    if m is None or m.group(1) != prefix:
        return False
    return hmac.compare_digest(m.group(3), _checksum(m.group(1), m.group(2)))


def require_pepper(pepper: Secret) -> None:
    """Refuse to hash with no pepper (settings loaded without ``config.ensure_pepper``)."""
    if not pepper:
        raise ConfigError("pepper: none is configured (KEYGATE_PEPPER, or the pepper file on first run)")


@functools.lru_cache(maxsize=4)
def _keyed(pepper: str) -> hmac.HMAC:
    return hmac.new(pepper.encode(), digestmod=hashlib.sha256)


def hash_key(pepper: Secret, key: str) -> str:
    """HMAC-SHA256 of the key under the server-side pepper, hex encoded."""
    # Copying a prepared HMAC skips the per-call digest lookup of a fresh one (OpenSSL 3 makes
    # that lookup cost more than the hashing itself).
    h = _keyed(pepper.reveal()).copy()
    h.update(key.encode())
    return h.hexdigest()


def hint(key: str) -> str:
    """A non-secret reminder of which key this is: prefix and last four characters."""
    prefix = key[: key.index("_") + 1]
    return f"{prefix}...{key[-4:]}"


@dataclass(frozen=True, slots=True)
class Issued:
    """A freshly generated secret with what may be stored about it (never the secret itself)."""

    secret: str
    key_hash: str
    hint: str


def issue(pepper: Secret, prefix: str = CLIENT_PREFIX) -> Issued:
    """Generate a key or token and derive its stored hash and display hint."""
    require_pepper(pepper)
    secret = generate(prefix)
    return Issued(secret, hash_key(pepper, secret), hint(secret))


def new_id(kind: str = "key") -> str:
    return f"{kind}_{secrets.token_hex(8)}"
