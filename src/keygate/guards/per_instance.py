"""Limits are never silently per instance: without shared counters, a networked database refuses them.

Several gateway instances on one networked database (PostgreSQL) and no ``redis_url`` would each
count rate limits, budgets in flight and lockouts on their own, each allowing the full limit. So
:func:`check_config` refuses to start when the settings configure any of them, saying why; and,
for limits stored on keys and teams (which the admin API can add while the gateway runs),
:class:`NeedsSharedCounters` answers a request whose key or team has a limit or budget with 503
``counters_unavailable`` instead of enforcing it per instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..chain import Guard
from ..context import Context
from ..errors import ConfigError, KeygateError, ServiceUnavailable
from ..limitconf import POLICY_KEYS, LimitSettings
from ..types import KeyRecord, Team

NEEDS_REDIS = ServiceUnavailable(
    "This key or its team has rate limits or a budget, and this gateway shares its database with "
    "other instances but not its limit counters (no redis_url): limits would be per instance.",
    code="counters_unavailable",
)


def networked(database_url: str) -> bool:
    """Whether the database may be shared by several instances (anything but a SQLite file)."""
    return not database_url.startswith("sqlite:")


def check_config(database_url: str, limits: LimitSettings, lockout_enabled: bool) -> None:
    """Refuse settings that would keep limits per instance on a shared, networked database."""
    if not networked(database_url):
        return
    found = []
    if any(k in limits.defaults for k in POLICY_KEYS):
        found.append("limits.defaults")
    if limits.global_.rps or limits.global_.max_concurrent:
        found.append("limits.global")
    if lockout_enabled:
        found.append("network.lockout (on unless network.lockout.enabled is false)")
    if found:
        raise ConfigError(
            f"redis_url: required with database_url {database_url.split(':', 1)[0]}:// when limits, "
            f"budgets or lockouts are configured ({', '.join(found)}): every instance would count "
            "them on its own, so N instances would allow N times each limit. Set redis_url "
            "(docs/redis.md) or remove them."
        )


def has_limits(policy: Mapping[str, Any]) -> bool:
    return any(policy.get(k) for k in POLICY_KEYS)


class NeedsSharedCounters(Guard):
    """Refuses (503) a request whose key or team policy has a limit, when counters are not shared."""

    name = "needs_shared_counters"
    needs = frozenset({"key", "team"})

    def __init__(self) -> None:
        self._seen: dict[str, tuple[KeyRecord, Team | None, bool]] = {}

    def request(self, ctx: Context) -> KeygateError | None:
        key, team = ctx.key, ctx.team
        assert key is not None
        seen = self._seen.get(key.id)
        if seen is None or seen[0] is not key or seen[1] is not team:
            limited = has_limits(key.policy) or (team is not None and has_limits(team.policy))
            seen = self._seen[key.id] = (key, team, limited)
        return NEEDS_REDIS if seen[2] else None
