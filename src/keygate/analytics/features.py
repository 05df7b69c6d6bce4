"""What the request path records for the analyser, and the few pure functions both sides share.

A feature is a plain tuple (one allocation, no attribute names to look up) appended to a list in
the ``complete`` phase of the anomaly guard (:mod:`keygate.guards.anomaly`); the analyser reads it
off the request path. Its positions are the ``F_*`` constants. Three kinds:

- ``REQUEST``: an authenticated request, whatever its answer;
- ``FAILURE``: an authentication failure (unknown, revoked or malformed key) before any key is
  known: ``F_AGENT`` holds a fingerprint of the presented credential (a keyed BLAKE2 hash, 8
  bytes, with a per-process random key: it tells distinct credentials apart and nothing more) and
  ``F_MODEL`` its visible prefix (``kg_`` and four characters, like a key's hint); never the secret;
- ``HONEYTOKEN``: a honeytoken key was presented (``F_KEY`` is its id).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import secrets
from typing import Final

Feature = tuple[
    float, str | None, str | None, str, str | None, str | None, str, int, str | None, int, int, int
]
"""``(ts, key_id, team_id, client_ip, agent, model, route, status, error_code, tokens,
prompt_tokens, kind)``."""

F_TS, F_KEY, F_TEAM, F_IP, F_AGENT, F_MODEL, F_ROUTE, F_STATUS, F_CODE, F_TOKENS, F_PROMPT, F_KIND = range(12)
REQUEST: Final = 0
FAILURE: Final = 1
HONEYTOKEN: Final = 2

AGENT_CHARS: Final = 120  # a user agent is kept to this many characters
PREFIX_CHARS: Final = 7  # "kg_" and four characters of a presented key
_FINGERPRINT_KEY: Final = secrets.token_bytes(16)
_VERSIONS = re.compile(r"[0-9][0-9A-Za-z.+_-]*")

# The status codes a policy refusal has (keygate's own error, an error code set): probing models,
# routes and limits shows as a burst of these.
DENIALS: Final = frozenset({400, 403, 404, 413, 415, 429})


def fingerprint(credential: str) -> str:
    """A short keyed hash of a presented credential: equal for equal inputs within one process,
    unrelated to the key's stored hash, irreversible (64 bits of a 190-bit random secret)."""
    return hashlib.blake2b(credential.encode(), digest_size=8, key=_FINGERPRINT_KEY).hexdigest()


def credential_prefix(credential: str) -> str:
    """The visible start of a presented key (``kg_AbCd``), or ``?`` for anything not key-shaped."""
    if not credential.startswith("kg_") or len(credential) < 20:
        return "?"
    return credential[:PREFIX_CHARS]


@functools.lru_cache(maxsize=4096)
def agent_family(agent: str | None) -> str:
    """A user agent without its version numbers: an SDK upgrade is not a new client."""
    if not agent:
        return "-"
    return _VERSIONS.sub("#", agent[:AGENT_CHARS])


@functools.lru_cache(maxsize=65536)
def network_of(ip: str, v4: int, v6: int) -> str:
    """The client network of an address: its IPv4 /``v4`` or IPv6 /``v6`` (``-`` if unparsable)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "-"
    prefix = v4 if addr.version == 4 else v6
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
