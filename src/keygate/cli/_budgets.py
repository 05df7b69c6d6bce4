"""``keygate usage --budgets``: spend against budget per key and team, for the current periods."""

from __future__ import annotations

import time
from typing import Any

from ..config import Settings
from ..guards.budget import budgets_of
from ..spend import counter_name
from ..store import Store
from ._common import print_json, print_table


def budget_views(settings: Settings, store: Store) -> list[dict[str, Any]]:
    spend: dict[str, tuple[float, float]] = store.load_spend()  # type: ignore[attr-defined]
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


def show(settings: Settings, store: Store, as_json: bool) -> None:
    views = budget_views(settings, store)
    if as_json:
        print_json(views)
        return
    print_table(
        ["scope", "id", "name", "budget", "period", "spent", "in flight", "used"],
        [
            [
                v["scope"],
                v["id"],
                v["name"],
                f"${v['budget']:g}" if v["kind"] == "usd" else f"{v['budget']:g} tokens",
                f"{v['period']} {v['period_key']}",
                f"{v['spent']:g}",
                f"{v['in_flight']:g}",
                f"{v['used_pct']}%",
            ]
            for v in views
        ],
    )
