"""The Store protocol: everything the gateway, the CLI and the admin API need from persistence.

:class:`~keygate.store.sqlite.SQLiteStore` and :class:`~keygate.store.postgres.PostgresStore`
implement it (sharing their SQL, :mod:`keygate.store.sql`); nothing else is needed. A networked
store raises :class:`~keygate.errors.StoreUnavailable` when its database cannot be reached, and
its ``keys_changed`` never raises. Two rules every implementation keeps:

- **A change and its audit entry commit together.** Every method that changes what an operator
  manages (keys, teams, admin tokens, upstreams) takes the :class:`~keygate.types.AuditRecord`
  describing the change and writes both in one transaction, or neither.
- **Audit entries form one hash chain** (:mod:`keygate.store.audit_sql`): each is sealed with the
  previous entry's hash under a key the database never holds, and writers are serialised through
  one head row, so concurrent writers never fork it.
- **Nothing secret is stored in the clear.** Client keys and admin tokens arrive as HMAC hashes,
  upstream keys sealed (:mod:`keygate.vault`); the store never sees a plaintext secret.

Methods are synchronous and safe to call from several threads (the event loop reads key records,
the writer threads write usage and spend, the admin API runs in worker threads).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..audit_chain import ChainRow
from ..types import AuditRecord, KeyRecord, Team, UsageRow
from ..vault import Sealed

if TYPE_CHECKING:  # (analytics_sql imports the audit writer, which imports this module)
    from .analytics_sql import AnomalyRow


@dataclass(frozen=True, slots=True)
class UsageSummary:
    key_id: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    first_ts: float | None
    last_ts: float | None
    estimated: int = 0  # requests whose token counts are their reservation (no usage reported)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class AdminToken:
    """An admin-plane credential as stored: never the plaintext token."""

    id: str
    name: str
    token_hash: str
    hint: str
    role: str
    created_at: float
    status: str = "active"
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit record as read back, with its sequence number and its details parsed."""

    id: int
    ts: float
    actor: str
    action: str
    target: str
    origin: str
    details: dict[str, Any]
    hash: str = ""  # its link in the audit chain (store/audit_sql.py)


@dataclass(frozen=True, slots=True)
class UpstreamDef:
    """An upstream defined with ``keygate upstreams add`` (rather than in the config file)."""

    name: str
    base_url: str
    allow_insecure: bool
    fallback: str | None
    ca_bundle: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class UpstreamKeyRow:
    """A stored upstream key: sealed material and what may be shown about it."""

    id: str
    upstream: str
    last4: str
    fingerprint: str
    created_at: float
    last_used_at: float | None
    status: str  # active | retiring | retired
    retire_at: float | None
    sealed: Sealed | None  # None once retired (the material is wiped)

    def effective_status(self, now: float) -> str:
        if self.status == "retiring" and self.retire_at is not None and self.retire_at <= now:
            return "retired"
        return self.status


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """One ownership record as stored."""

    id: str
    kind: str
    key_id: str | None
    created_at: float
    rev: int
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """A change the data plane writes behind: ``key_id`` None ends the ownership (a delete);
    ``meta`` None keeps what the row holds."""

    id: str
    kind: str
    key_id: str | None
    ts: float
    meta: dict[str, Any] | None = None


KEY_FIELDS = frozenset({"name", "team_id", "upstream", "metadata", "policy"})
"""The fields of a key record :meth:`Store.update_key` may change."""


class Store(Protocol):
    def migrate(self) -> None: ...
    def close(self) -> None: ...
    def ping(self) -> None:
        """Raise unless the database answers now (``/readyz``); cheap."""
        ...

    # -- client keys (a change to a key or team counts for keys_changed) -------------------------
    def insert_key(self, record: KeyRecord, audit: AuditRecord) -> None: ...
    def get_key(self, key_id: str) -> KeyRecord | None: ...
    def list_keys(self) -> list[KeyRecord]: ...
    def update_key(self, key_id: str, changes: Mapping[str, Any], audit: AuditRecord) -> KeyRecord | None:
        """Change fields of :data:`KEY_FIELDS`; None if there is no such key (nothing written)."""
        ...

    def revoke_key(self, key_id: str, when: float, audit: AuditRecord) -> bool:
        """True if the key was active (then the audit entry is written too)."""
        ...

    def rotate_key_secret(
        self,
        key_id: str,
        new_hash: str,
        new_hint: str,
        grace_until: float,
        policy: Mapping[str, Any],
        audit: AuditRecord,
    ) -> bool:
        """Give a key a new secret hash; the old hash keeps working until ``grace_until``."""
        ...

    def list_grace_secrets(self, now: float) -> Iterator[tuple[str, str, float]]:
        """(old hash, key id, expiry) of rotated client-key secrets still in their grace period."""
        ...

    def keys_changed(self) -> bool:
        """Cheap check, safe on every request: did any writer change key or team records?"""
        ...

    # -- teams ------------------------------------------------------------------------------------
    def insert_team(self, team: Team, audit: AuditRecord) -> None: ...
    def get_team(self, ref: str) -> Team | None:
        """A team by id or name."""
        ...

    def list_teams(self) -> list[Team]: ...
    def update_team(self, team_id: str, policy: Mapping[str, Any], audit: AuditRecord) -> Team | None: ...

    # -- usage and spend --------------------------------------------------------------------------
    def write_usage(self, rows: Sequence[UsageRow]) -> None: ...
    def usage_summary(self, key_id: str | None = None, since: float | None = None) -> list[UsageSummary]: ...
    def load_spend(self) -> dict[str, tuple[float, float]]:
        """Every budget counter: name -> (spent, held)."""
        ...

    def save_spend(self, rows: Sequence[tuple[str, float, float]], ts: float) -> None:
        """Absolute ``(name, spent, held)`` values of the budget counters that changed."""
        ...

    # -- audit ------------------------------------------------------------------------------------
    def write_audit(self, record: AuditRecord) -> None:
        """An entry that goes with no change of state (a refusal, a security event)."""
        ...

    def list_audit(
        self,
        limit: int = 100,
        action: str | None = None,
        *,
        actor: str | None = None,
        since: float | None = None,
    ) -> list[AuditEntry]:
        """The newest entries first (``action`` ending in ``.`` or ``*``: a prefix)."""
        ...

    def audit_head(self) -> tuple[int, str, int]:
        """(seq, hash) of the chain's last entry, and the first entry the chain covers."""
        ...

    def audit_chain_rows(self, start: int = 1) -> list[ChainRow]:
        """Every entry from ``start`` on, in stored order, chain fields included."""
        ...

    # -- admin tokens -----------------------------------------------------------------------------
    def insert_admin_token(self, token: AdminToken, audit: AuditRecord) -> None: ...
    def admin_token_by_hash(self, token_hash: str) -> AdminToken | None: ...
    def get_admin_token(self, token_id: str) -> AdminToken | None: ...
    def list_admin_tokens(self) -> list[AdminToken]: ...
    def revoke_admin_token(self, token_id: str, when: float, audit: AuditRecord) -> bool: ...

    # -- upstreams and their keys (a change bumps upstreams_rev) ------------------------------------
    def upstreams_rev(self) -> str: ...
    def put_upstream_def(self, definition: UpstreamDef, audit: AuditRecord) -> None: ...
    def list_upstream_defs(self) -> list[UpstreamDef]: ...
    def insert_upstream_key(
        self, row: UpstreamKeyRow, audit: AuditRecord, retire_others_at: float | None = None
    ) -> None:
        """Add a key; with ``retire_others_at``, the upstream's other active keys start retiring."""
        ...

    def list_upstream_keys(self, upstream: str | None = None) -> list[UpstreamKeyRow]: ...
    def retire_upstream_key(self, upstream: str, key_id: str, now: float, audit: AuditRecord) -> bool:
        """Retire (and wipe) one live key now."""
        ...

    def sweep_retired_keys(self, now: float) -> int:
        """Retire (and wipe) every key whose grace period is over; how many."""
        ...

    def rewrap_upstream_key(self, key_id: str, old_kek: str, new: Sealed) -> bool:
        """Replace one row's wrapped data key, only if it is still wrapped by ``old_kek``."""
        ...

    def touch_upstream_keys(self, used: Mapping[str, float]) -> None: ...
    def enable_upstream_key(self, upstream: str, key_id: str, now: float, audit: AuditRecord) -> None:
        """Ask running gateways to put a key rejected (401/403) before ``now`` back into rotation."""
        ...

    def upstream_key_enables(self) -> dict[str, float]: ...
    def count_sealed_upstream_keys(self) -> int: ...

    # -- behavioural analytics (store/analytics_sql.py; a quarantine counts for keys_changed) ------
    def write_anomalies(self, rows: Sequence[AnomalyRow]) -> None: ...
    def list_anomalies(
        self, key_id: str | None = None, since: float | None = None, limit: int = 100
    ) -> list[AnomalyRow]:
        """The newest events first."""
        ...

    def get_anomaly(self, event_id: str) -> AnomalyRow | None: ...
    def ack_anomaly(self, event_id: str, by: str, when: float, audit: AuditRecord) -> bool: ...
    def quarantine_key(
        self, key_id: str, ts: float, event_id: str, detector: str, audit: AuditRecord
    ) -> bool:
        """False if the key was quarantined already (nothing written)."""
        ...

    def release_key(self, key_id: str, audit: AuditRecord) -> bool:
        """False if the key was not quarantined (nothing written)."""
        ...

    def list_quarantines(self) -> dict[str, tuple[float, str, str]]:
        """Quarantined key id -> (since, event id, detector)."""
        ...

    def save_baselines(self, rows: Sequence[tuple[str, str]], ts: float) -> None: ...
    def load_baselines(self) -> dict[str, str]: ...

    # -- stored OpenAI objects and their owners (a change bumps objects_rev) -----------------------
    def write_objects(self, changes: Sequence[ObjectChange]) -> None:
        """What the data plane saw: creates (an owner), deletes (none), keygate's notes (meta)."""
        ...

    def set_object_owner(
        self, object_id: str, kind: str, key_id: str | None, ts: float, audit: AuditRecord
    ) -> ObjectRow | None:
        """Assign or (``key_id`` None) unassign an object, audited; the row as it was before."""
        ...

    def get_object(self, object_id: str) -> ObjectRow | None: ...
    def list_objects(
        self, key_id: str | None = None, kind: str | None = None, limit: int = 1000
    ) -> list[ObjectRow]: ...
    def objects_since(self, rev: int) -> tuple[int, list[ObjectRow]]:
        """The current objects_rev and the rows changed after ``rev``, tombstones included."""
        ...

    def objects_rev(self) -> int: ...
    def objects_changed(self) -> bool:
        """Cheap, safe on every request: may an ownership record have changed since the last call?"""
        ...
