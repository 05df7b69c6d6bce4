"""The Store protocol: what the gateway, the CLI and the admin API need from persistence."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..types import KeyRecord, Team, UsageRow


@dataclass(frozen=True, slots=True)
class UsageSummary:
    key_id: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    first_ts: float | None
    last_ts: float | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Store(Protocol):
    def migrate(self) -> None: ...
    def close(self) -> None: ...

    # client keys
    def insert_key(self, record: KeyRecord) -> None: ...
    def get_key(self, key_id: str) -> KeyRecord | None: ...
    def list_keys(self) -> list[KeyRecord]: ...
    def revoke_key(self, key_id: str, when: float) -> bool: ...
    def update_key(self, key_id: str, **fields: Any) -> KeyRecord | None: ...
    def keys_changed(self) -> bool:
        """Cheap check, safe on every request: did another writer change key records?"""
        ...

    def list_grace_secrets(self, now: float) -> Iterator[tuple[str, str, float]]:
        """(old hash, key id, expiry) of rotated client-key secrets still in their grace period."""
        ...

    # teams (a change to a team counts as a key change for keys_changed)
    def insert_team(self, team: Team) -> None: ...
    def get_team(self, team_id: str) -> Team | None: ...
    def list_teams(self) -> list[Team]: ...
    def update_team(self, team_id: str, policy: dict[str, Any]) -> Team | None: ...

    # usage
    def write_usage(self, rows: Sequence[UsageRow]) -> None: ...
    def usage_summary(self, key_id: str | None = None, since: float | None = None) -> list[UsageSummary]: ...
    def usage_rows(self, key_id: str | None = None, limit: int = 100) -> list[UsageRow]: ...

    # audit
    def write_audit(
        self, ts: float, actor: str, action: str, target: str, origin: str, details: str
    ) -> None: ...
