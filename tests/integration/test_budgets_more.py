"""Budgets, more cases: default price, weekly budgets, team budgets, embeddings, soft threshold once.

Each test goes through a real keygate server in front of the real MockUpstream, and checks that
refused requests never reached the upstream.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET, Gateway, assert_no_secret_written
from .test_budgets import MESSAGES, WORDY, Hook, _budgets, _chat, _wait_spent

SOFT_FIELDS = {"event", "scope", "id", "name", "kind", "period", "counter", "spent", "budget", "threshold"}


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, hook: Hook, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    extra = {
        "limits": {
            "default_max_output_tokens": 1,
            "soft_threshold": 0.5,
            "webhook_url": hook.url,
            # $1 per prompt token and $2 per completion token keep the arithmetic readable
            "prices": {"gpt-4o-mini": {"input": 1_000_000, "cached_input": 500_000, "output": 2_000_000}},
            # $3 per prompt token, $4 per completion token for any model without a price
            "default_price": {"input": 3_000_000, "output": 4_000_000},
        }
    }
    g = Gateway(tmp_path_factory.mktemp("budgets-more"), upstream.url, extra=extra).start()
    try:
        yield g
    finally:
        g.stop()
    assert_no_secret_written(g.written_files(), g.secrets)


def _row(g: Gateway, ident: str, kind: str) -> dict[str, Any]:
    return next(r for r in _budgets(g, ident) if r["kind"] == kind)


def _hooks_for(hook: Hook, ident: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        calls = [h for h in list(hook.received) if h["id"] == ident]
        if calls:
            return calls
        assert time.monotonic() < deadline, f"no webhook call for {ident}"
        time.sleep(0.05)


def _iso_week() -> str:
    year, week, _ = datetime.datetime.now(datetime.UTC).isocalendar()
    return f"{year}-W{week:02d}"


def test_unpriced_model_is_metered_at_the_default_price(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("dflt", "--budget-usd", "100/month")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    answer = client.chat.completions.create(model="mystery-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.prompt_tokens == 1
    assert [r.json()["model"] for r in mock.requests] == ["mystery-model"]
    # capped at its reservation (default_max_output_tokens: 1): 1 prompt ($3) + 1 completion ($4)
    assert mock.requests[-1].json()["max_completion_tokens"] == 1
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] > 0)
    assert row["spent"] == pytest.approx(7.0) and row["kind"] == "usd" and row["in_flight"] == 0


def test_default_price_does_not_open_non_token_endpoints(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("img", "--budget-usd", "100/month")["key"]
    client = OpenAI(base_url=gw.url, api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert info.value.code == "model_not_priced"
    assert mock.requests == []
    assert len(client.models.list().data) > 0  # no model, nothing to meter: passes


def test_week_budget_accumulates_within_the_iso_week(gw: Gateway, mock: MockUpstream) -> None:
    week_before = _iso_week()
    key = gw.create_key("weekly", "--budget-tokens", "500/week")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=2)
    client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    # 402 of 500 spent: the third request's prompt estimate (~116 tokens) + 1 output does not fit
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    assert info.value.code == "insufficient_quota"
    assert "week budget of 500 tokens" in info.value.message
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 7 * 86400  # until next Monday
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(mock.requests) == 2
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] == 402)  # 2 x (200 prompt + 1 completion)
    assert row["period"] == "week" and row["budget"] == 500 and row["in_flight"] == 0
    assert row["period_key"] in {week_before, _iso_week()}  # (the test may straddle Monday 00:00)


def test_team_budget_is_shared_and_refuses_every_key(gw: Gateway, mock: MockUpstream, hook: Hook) -> None:
    team = json.loads(gw.cli("teams", "create", "crew", "--budget-tokens", "500/day", "--json").stdout)
    a = gw.create_key("crew-a", "--team", "crew", "--budget-tokens", "100000/day")
    b = gw.create_key("crew-b", "--team", "crew", "--budget-tokens", "100000/day")
    ca = OpenAI(base_url=gw.url, api_key=a["key"], max_retries=2)
    cb = OpenAI(base_url=gw.url, api_key=b["key"], max_retries=2)
    ca.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    cb.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    assert len(mock.requests) == 2
    # The team has 98 tokens left; each key alone has ~99,800: both are refused by the team budget.
    for client in (ca, cb):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
        assert info.value.code == "insufficient_quota"
        assert "team's day budget" in info.value.message
    assert len(mock.requests) == 2  # the refused requests never reached the upstream
    _wait_spent(gw, team["id"], lambda r: r["spent"] == 402)
    team_row = _row(gw, team["id"], "tokens")
    assert team_row["scope"] == "team" and team_row["budget"] == 500 and team_row["in_flight"] == 0
    for key in (a, b):
        row = _row(gw, key["id"], "tokens")
        assert row["spent"] == 201 and row["budget"] == 100000  # refused requests charged nothing
    # 402 of 500 passed the 50% soft threshold of the team's budget: a team-scoped notice
    (call,) = _hooks_for(hook, team["id"])
    assert call["scope"] == "team" and call["name"] == "crew" and call["spent"] == 402


def test_embeddings_are_charged_at_the_embedding_models_price(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("embed", "--budget-usd", "1/day")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    text = "word " * 5000  # the mock counts 5,000 prompt tokens
    small = client.embeddings.create(model="text-embedding-3-small", input=text)
    assert small.usage.prompt_tokens == 5000
    # shipped price of text-embedding-3-small: $0.02 per million tokens
    _wait_spent(gw, key["id"], lambda r: r["spent"] == pytest.approx(0.0001))
    client.embeddings.create(model="text-embedding-3-large", input=text)
    # plus text-embedding-3-large at $0.13 per million: another $0.00065
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] == pytest.approx(0.00075))
    assert row["in_flight"] == 0 and row["kind"] == "usd"
    assert [r.json()["model"] for r in mock.requests] == ["text-embedding-3-small", "text-embedding-3-large"]


def test_embedding_without_price_is_refused_under_a_dollar_budget(
    gw: Gateway, mock: MockUpstream, upstream: MockUpstream, tmp_path: Any
) -> None:
    # without limits.default_price (this module's gateway has one): a separate gateway
    with Gateway(tmp_path, upstream.url, extra={"limits": {}}) as g:
        key = g.create_key("embed-np", "--budget-usd", "1/day")["key"]
        refused = httpx.post(
            f"{g.url}/embeddings",
            json={"model": "my-embedder", "input": "hello"},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "model_not_priced"
        assert mock.requests == []
    assert_no_secret_written(g.written_files(), g.secrets)


def test_soft_threshold_fires_once_per_period_without_secrets(
    gw: Gateway, mock: MockUpstream, hook: Hook
) -> None:
    key = gw.create_key("soft-once", "--budget-tokens", "1000/day")
    for _ in range(4):  # spent 201, 402, 603 (crosses 500), 804
        assert _chat(gw, key["key"], messages=WORDY).status_code == 200
    _wait_spent(gw, key["id"], lambda r: r["spent"] == 804)
    # A later key crossing its own threshold: its notice is sent after any second one for the first.
    sentinel = gw.create_key("soft-sentinel", "--budget-tokens", "300/day")
    assert _chat(gw, sentinel["key"], messages=WORDY).status_code == 200
    _hooks_for(hook, sentinel["id"])
    calls = _hooks_for(hook, key["id"])
    assert len(calls) == 1, calls
    (call,) = calls
    assert set(call) == SOFT_FIELDS
    assert call["event"] == "budget.soft_threshold" and call["scope"] == "key" and call["kind"] == "tokens"
    assert call["period"] == "day" and call["budget"] == 1000 and call["spent"] == 603
    assert call["threshold"] == 0.5 and call["name"] == "soft-once"
    assert call["counter"].startswith(f"key:{key['id']}|tokens|")
    text = json.dumps(call)
    for secret in (key["key"], UPSTREAM_SECRET, "kg_", "Bearer", "sk-"):
        assert secret not in text
