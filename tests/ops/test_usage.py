"""``keygate.ops.usage``: requests and tokens per key, spend against budget, the audit trail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from keygate.errors import InvalidRequest
from keygate.ops import keys, teams, usage
from keygate.spend import counter_name
from keygate.types import UsageRow

from .conftest import Ops, make_ops


def row(key_id: str | None, ts: float, status: int = 200, prompt: int = 3, completion: int = 4) -> UsageRow:
    return UsageRow(ts, "req_1", key_id, "chat.completions", "POST", "/v1/chat/completions", "gpt-4o", status,
                    prompt, completion, 0, 2.0, "127.0.0.1", "openai", False)  # fmt: skip


def test_usage_per_key_with_names(ops: Ops) -> None:
    a = keys.create(ops.store, ops.settings, ops.actor, {"name": "alpha"})
    b = keys.create(ops.store, ops.settings, ops.actor, {"name": "beta"})
    ops.store.write_usage([row(a["id"], 1e9), row(a["id"], 1e9 + 60, status=500, prompt=0, completion=0),
                           row(b["id"], 1e9 + 5), row(None, 1e9 + 9, status=401, prompt=0, completion=0),
                           row("key_deleted", 1e9 + 1)])  # fmt: skip
    views = {v["key_id"]: v for v in usage.usage(ops.store)}
    assert views[a["id"]] == {"key_id": a["id"], "name": "alpha", "requests": 2, "errors": 1, "prompt_tokens": 3,
                              "completion_tokens": 4, "total_tokens": 7, "estimated": 0, "first": "2001-09-09T01:46:40Z",
                              "last": "2001-09-09T01:47:40Z"}  # fmt: skip
    assert (views[None]["name"], views[None]["errors"]) == (None, 1)
    assert views["key_deleted"]["name"] is None  # a key no longer listed keeps its usage
    assert [v["key_id"] for v in usage.usage(ops.store, b["id"])] == [b["id"]]
    assert usage.usage(ops.store, "key_none") == []


def test_budgets_show_spend_of_the_current_period(tmp_path: Path) -> None:
    ops = make_ops(tmp_path, {"limits": {"defaults": {"budget_tokens": {"amount": 500, "period": "day"}}}})
    team = teams.create(
        ops.store, ops.actor, {"name": "crew", "policy": {"budget_usd": {"amount": 20, "period": "week"}}}
    )
    one = keys.create(ops.store, ops.settings, ops.actor, {"name": "one", "team": "crew",
                                                          "policy": {"budget_usd": "10/month"}})  # fmt: skip
    two = keys.create(ops.store, ops.settings, ops.actor, {"name": "two", "team": "crew"})
    now = time.time()
    month = counter_name(f"key:{one['id']}", "usd", "month", now)
    ops.store.save_spend([(month, 2.5, 0.5), (counter_name(f"team:{team['id']}", "usd", "week", now), 1.0, 0.0),
                          (counter_name(f"key:{one['id']}", "usd", "month", now - 40 * 86400), 9.0, 0.0)], now)  # fmt: skip
    views = usage.budgets(ops.settings, ops.store)
    by = {(v["scope"], v["id"], v["kind"]): v for v in views}
    assert set(by) == {
        ("key", one["id"], "usd"), ("key", one["id"], "tokens"), ("team", team["id"], "usd"), ("key", two["id"], "tokens"),
    }  # fmt: skip
    assert len(views) == 4  # the team's budget once, though two keys share it
    usd = by[("key", one["id"], "usd")]
    assert usd == {"scope": "key", "id": one["id"], "name": "one", "kind": "usd", "period": "month",
                   "period_key": month.rsplit("|", 1)[1], "spent": 2.5, "in_flight": 0.5, "budget": 10.0,
                   "used_pct": 30.0}  # fmt: skip
    assert (
        by[("team", team["id"], "usd")]["used_pct"] == 5.0
        and by[("team", team["id"], "usd")]["name"] == "crew"
    )
    fresh = by[("key", two["id"], "tokens")]  # the default budget, nothing spent yet
    assert (fresh["budget"], fresh["spent"], fresh["used_pct"]) == (500.0, 0.0, 0.0)
    ops.store.close()


def test_audit_newest_first_with_a_limit_and_an_action(ops: Ops) -> None:
    made = [keys.create(ops.store, ops.settings, ops.actor, {"name": f"k{i}"}) for i in range(3)]
    keys.revoke(ops.store, ops.actor, made[0]["id"])
    entries = usage.audit(ops.store)
    assert [e["action"] for e in entries] == ["keys.revoke", "keys.create", "keys.create", "keys.create"]
    assert [e["target"] for e in entries[1:]] == [m["id"] for m in reversed(made)]
    first = entries[-1]
    assert set(first) == {"id", "ts", "actor", "action", "target", "origin", "details", "hash"}
    assert (first["actor"], first["origin"], first["ts"][-1]) == ("adm_ops", "10.0.0.7", "Z")
    assert len(usage.audit(ops.store, 2)) == 2 and len(usage.audit(ops.store, 1000)) == 4
    assert [e["target"] for e in usage.audit(ops.store, action="keys.revoke")] == [made[0]["id"]]
    for bad in (0, -1, 1001):
        with pytest.raises(InvalidRequest, match="from 1 to 1000") as info:
            usage.audit(ops.store, bad)
        assert info.value.param == "limit"
