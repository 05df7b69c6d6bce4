"""The small typed contract every module shares: secrets, key records, usage."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Final

REDACTED: Final = "**redacted**"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Secret:
    """A secret string that will not print itself.

    ``str()``, ``repr()`` and f-strings show a redaction marker, so a stray log call cannot leak
    it. Call :meth:`reveal` at the one place that really needs the value.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A client key as the data plane sees it. Never holds the plaintext key."""

    id: str
    name: str
    key_hash: str
    hint: str
    created_at: float
    status: str = "active"  # active | revoked
    team_id: str | None = None
    upstream: str | None = None
    last_used_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per-key rules (allowed models/routes, expiry, networks, caps, limits, budgets...), as plain
    # JSON data; each guard reads the part it owns.
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class Team:
    """A group of keys sharing a policy; the stricter of key and team policy wins."""

    id: str
    name: str
    created_at: float
    policy: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Usage:
    """Token counts of one request, as reported by the upstream (see metering.py), or its
    reservation when nothing was reported (``estimated``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    # Streamed events that carried output, counted as the stream passed (a lower bound of the
    # output tokens; a budget cuts off a stream that goes past its reservation). Counted only when
    # ``counted`` is set (by the budget guard, for a stream it watches): other streams pay nothing.
    streamed: int = 0
    counted: bool = False
    # The upstream reported these counts (a top-level ``usage`` object was read).
    reported: bool = False
    # No usage arrived for a request that may have been billed: the counts are the request's
    # reservation (its worst case), set by the limit guards (see guards/_estimate.py).
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)  # not frozen: a frozen __init__ is several times slower, and this is per request
class UsageRow:
    """One finished request, as recorded in the store and the access log."""

    ts: float
    request_id: str
    key_id: str | None
    route: str
    method: str
    path: str
    model: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_ms: float
    client_ip: str
    upstream: str | None
    stream: bool
    error_code: str | None = None
    estimated: bool = False  # the token counts are the reservation: no usage was reported


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit entry, ready to store: who did what to which target, from where, when.

    ``details`` is JSON text with anything key-shaped masked (built by ``ops.audit``). A store
    writes it in the same transaction as the change it describes.
    """

    ts: float
    actor: str
    origin: str
    action: str
    target: str
    details: str = "{}"
