"""``keygate usage`` (``keygate.cli.usage``): requests and tokens per key, and spend against budget."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import Gateway

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "two words"}]}


def test_usage_is_recorded_and_summarised(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url) as gw:
        key = gw.create_key("app")
        other = gw.create_key("other")
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "two words"}]
            )
        for _ in client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "two words"}], stream=True
        ):
            pass
        openai.OpenAI(base_url=gw.url, api_key=other["key"], max_retries=0).models.list()
        last_request = time.time()
    # A clean shutdown flushed everything; the CLI reads it from the database.
    usage = {u["key_id"]: u for u in json.loads(gw.cli("usage", "--json").stdout)}
    assert usage[key["id"]]["requests"] == 4
    assert usage[key["id"]]["prompt_tokens"] == 8 and usage[key["id"]]["completion_tokens"] == 12
    assert usage[other["id"]]["requests"] == 1
    only = json.loads(gw.cli("usage", "--key", other["id"], "--json").stdout)
    assert [u["key_id"] for u in only] == [other["id"]]
    rows = (
        sqlite3.connect(tmp_path / "keygate.db")
        .execute(
            "SELECT route, model, status, prompt_tokens, completion_tokens, client_ip, latency_ms, stream, ts"
            " FROM usage WHERE key_id = ? ORDER BY id",
            (key["id"],),
        )
        .fetchall()
    )
    assert [r[:6] for r in rows] == [("chat.completions", "gpt-4o", 200, 2, 3, "127.0.0.1")] * 4
    assert [r[7] for r in rows] == [0, 0, 0, 1]
    assert all(r[6] > 0 and r[8] <= last_request for r in rows)
    listed = {k["id"]: k for k in json.loads(gw.cli("keys", "list", "--json").stdout)}
    assert listed[key["id"]]["last_used_at"] is not None
    lines = gw.access_log.read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["client_ip"] == "127.0.0.1" for line in lines)


def test_usage_table_and_budgets(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url, extra={"limits": {"soft_threshold": 0.9}})
    gw.cli("teams", "create", "research", "--budget-tokens", "1000/day")
    key = gw.create_key("metered", "--team", "research", "--budget-usd", "5/month")
    gw.create_key("unbudgeted")
    with gw:
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    budgets = json.loads(gw.cli("usage", "--budgets", "--json").stdout)
    by_scope = {(b["scope"], b["kind"]): b for b in budgets}
    assert set(by_scope) == {("key", "usd"), ("team", "tokens")}
    tokens = by_scope[("team", "tokens")]
    assert tokens["name"] == "research" and tokens["budget"] == 1000 and tokens["period"] == "day"
    assert tokens["spent"] == 5 and tokens["in_flight"] == 0 and tokens["used_pct"] == 0.5
    assert tokens["period_key"] == time.strftime("%Y-%m-%d", time.gmtime())
    usd = by_scope[("key", "usd")]
    assert usd["id"] == key["id"] and usd["name"] == "metered" and usd["spent"] > 0
    table = gw.cli("usage", "--budgets").stdout.splitlines()
    assert table[0].split() == ["SCOPE", "ID", "NAME", "BUDGET", "PERIOD", "SPENT", "IN", "FLIGHT", "USED"]
    assert any("$5" in row and "month" in row for row in table[1:])
    assert any("1000 tokens" in row and "0.5%" in row for row in table[1:])
    rows = gw.cli("usage").stdout.splitlines()
    assert rows[0].split() == [
        "KEY",
        "NAME",
        "REQUESTS",
        "ERRORS",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
        "ESTIMATED",
        "LAST",
    ]
    (mine,) = [r for r in rows if key["id"] in r]
    assert mine.split()[1:8] == ["metered", "1", "0", "2", "3", "5", "0"]


def test_estimated_rows_are_marked_and_old_databases_upgraded(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    gw = Gateway(tmp_path, upstream.url)
    key = gw.create_key("est", "--budget-tokens", "100000/day")
    db = tmp_path / "keygate.db"
    # A database from before the estimated column: the column and its migration record gone.
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE usage DROP COLUMN estimated")
        conn.execute("DELETE FROM schema_migrations WHERE name = '0004_usage_estimated'")
        conn.execute(
            "INSERT INTO usage (ts, request_id, key_id, route, method, path, model, status, prompt_tokens,"
            " completion_tokens, cached_tokens, latency_ms, client_ip, upstream, stream)"
            " VALUES (1, 'old', ?, 'chat.completions', 'POST', '/v1/chat/completions', 'gpt-4o', 200,"
            " 1, 1, 0, 1.0, '127.0.0.1', 'openai', 0)",
            (key["id"],),
        )
    with gw:
        mock.reply_next(200, b"not json")  # no usage: charged its reservation
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        client.chat.completions.with_raw_response.create(**CHAT, max_completion_tokens=40)  # type: ignore[call-overload]
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    rows = (
        sqlite3.connect(db)
        .execute("SELECT request_id, completion_tokens, estimated FROM usage ORDER BY id")
        .fetchall()
    )
    assert rows[0] == ("old", 1, 0)  # kept, as reported
    assert [r[1:] for r in rows[1:]] == [(40, 1), (3, 0)]
    (view,) = json.loads(gw.cli("usage", "--json").stdout)
    assert view["estimated"] == 1 and view["requests"] == 3 and view["completion_tokens"] == 44
    (line,) = [r for r in gw.cli("usage").stdout.splitlines() if key["id"] in r]
    assert line.split()[1:8] == [
        "est",
        "3",
        "0",
        str(view["prompt_tokens"]),
        "44",
        str(view["total_tokens"]),
        "1",
    ]


def test_unauthenticated_requests_have_a_row_of_their_own(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    with gw:
        refused = openai.OpenAI(base_url=gw.url, api_key="kg_wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            refused.models.list()
    db = sqlite3.connect(tmp_path / "keygate.db")
    assert db.execute("SELECT COUNT(*) FROM usage WHERE key_id IS NULL").fetchone() == (1,)
    db.close()
    (row,) = json.loads(gw.cli("usage", "--json").stdout)
    assert (row["key_id"], row["name"], row["requests"], row["errors"]) == (None, None, 1, 1)
    assert "(unauthenticated)" in gw.cli("usage").stdout


def test_a_dollar_budget_is_priced_without_a_limits_section(tmp_path: Path, mock: MockUpstream) -> None:
    """Prices ship with keygate (docs/limits.md); a config without ``limits:`` must use them too."""
    gw = Gateway(tmp_path, mock.url)
    key = gw.create_key("usd", "--budget-usd", "5/month")
    with gw:
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        assert client.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
    (usd,) = json.loads(gw.cli("usage", "--budgets", "--json").stdout)
    assert usd["spent"] > 0
