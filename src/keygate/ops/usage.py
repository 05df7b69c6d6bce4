"""What was used: requests and tokens per key, spend against budget, and the audit trail."""

from __future__ import annotations

import time
from typing import Any

from ..config import Settings
from ..errors import InvalidRequest
from ..spend import budgets_of, counter_name
from ..store import Store
from .views import audit_view, usage_view


def usage(store: Store, key_id: str | None = None) -> list[dict[str, Any]]:
    names = {k.id: k.name for k in store.list_keys()}
    return [usage_view(s, names.get(s.key_id or "")) for s in store.usage_summary(key_id)]


def budgets(settings: Settings, store: Store) -> list[dict[str, Any]]:
    """Spend against budget for the current period of every key and team budget."""
    spend = store.load_spend()
    teams = {t.id: t for t in store.list_teams()}
    now = time.time()
    views: list[dict[str, Any]] = []
    seen: set[str] = set()
    for key in store.list_keys():
        for b in budgets_of(key, teams.get(key.team_id or ""), settings.limits.defaults):
            name = counter_name(b.scope, b.kind, b.period, now)
            if name in seen:
                continue
            seen.add(name)
            spent, held = spend.get(name, (0.0, 0.0))
            scope, _, ident = b.scope.partition(":")
            views.append(
                {
                    "scope": scope,
                    "id": ident,
                    "name": b.label,
                    "kind": b.kind,
                    "period": b.period,
                    "period_key": name.rsplit("|", 1)[1],
                    "spent": round(spent, 6),
                    "in_flight": round(held, 6),
                    "budget": b.amount,
                    "used_pct": round(100.0 * (spent + held) / b.amount, 1) if b.amount else 0.0,
                }
            )
    return views


def audit(store: Store, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
    """The newest audit entries first, at most ``limit`` (1 to 1000)."""
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be an integer from 1 to 1000", param="limit")
    return [audit_view(e) for e in store.list_audit(limit, action)]
