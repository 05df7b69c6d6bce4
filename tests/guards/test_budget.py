"""Budgets per key and team, in tokens and US dollars: reserve the worst case, clamp the output to
what is left, refuse what cannot fit, cut off a stream past its hold, settle the real usage, tell
once past the soft threshold. The guard in process first (plain and awaiting), then through a real
keygate: the SDK's errors, team budgets, embeddings, the webhook, persistence across a restart, and
holds in flight at a crash (kill -9, so a process of its own)."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import datetime
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from keygate.cli import main as cli_main
from keygate.config import Upstream
from keygate.context import Context
from keygate.counters import MemoryCounters
from keygate.errors import BudgetExceeded, InvalidRequest, PermissionDenied
from keygate.guards.budget import AsyncBudgetGuard, BudgetGuard, BudgetGuardBase, Reservation, budget_guard
from keygate.limitconf import parse_limits
from keygate.metering import fill_usage
from keygate.spend import SpendBook, counter_name, period_end
from keygate.testing import MockUpstream, context, key_record, run_complete, run_request
from keygate.types import KeyRecord, Team

from ..helpers import UPSTREAM_SECRET, Gateway, ProcessGateway, assert_no_secret_written
from .common import AwaitingCounters, Hook, decide, logged

MESSAGES = [{"role": "user", "content": "hi"}]
WORDY = [{"role": "user", "content": "a " * 200}]  # the mock counts 200 prompt tokens
# $1 per prompt token and $2 per completion token keep the arithmetic readable
PRICES = {"gpt-4o-mini": {"input": 1_000_000, "cached_input": 500_000, "output": 2_000_000}}
SOFT_FIELDS = {"event", "scope", "id", "name", "kind", "period", "counter", "spent", "budget", "threshold"}
NOON = float(calendar.timegm((2025, 8, 20, 12, 0, 0)))  # a Wednesday
UPSTREAM = Upstream("openai", "https://api.openai.com/v1", "", None)  # where a request went


# -- in process ----------------------------------------------------------------------------------


class Budgets:
    """A budget guard on in-process counters, and requests for it."""

    def __init__(self, counters: Any = None, **limits: Any) -> None:
        self.counters = counters if counters is not None else MemoryCounters()
        raw = {"default_max_output_tokens": 100, "prices": PRICES, **limits}
        self.guard: BudgetGuardBase = budget_guard(
            self.counters, parse_limits(raw), SpendBook(self.counters, None, 60.0)
        )

    def chat(
        self,
        key: KeyRecord,
        team: Team | None = None,
        *,
        ts: float = NOON,
        path: str = "/v1/chat/completions",
        **body: Any,
    ) -> Context:
        ctx = context(
            "POST", path, json={"model": "gpt-4o-mini", "messages": MESSAGES, **body}, key=key, team=team
        )
        ctx.ts = ts
        return ctx

    def held(self, ctx: Context) -> list[tuple[float, float]]:
        res: Reservation = ctx.extras["budget"]
        return self.counters.available_now(res.names)

    def state(self, name: str) -> tuple[float, float]:
        return self.counters.snapshot_now([name])[name]


def _prompt(ctx: Context) -> int:
    return (len(ctx.body) + 3) // 4


def _sent(ctx: Context) -> dict[str, Any]:
    sent: dict[str, Any] = orjson.loads(ctx.upstream_body())
    return sent


def _tokens(amount: str, **extra: Any) -> KeyRecord:
    amount_, _, period = amount.partition("/")
    return key_record(
        "key_1",
        {"budget_tokens": {"amount": int(amount_), "period": period or "lifetime"}, **extra},
        name="app",
    )


def _usd(amount: float, period: str = "lifetime") -> KeyRecord:
    return key_record("key_1", {"budget_usd": {"amount": amount, "period": period}}, name="app")


def test_a_key_without_budgets_costs_nothing() -> None:
    b = Budgets()
    ctx = b.chat(key_record("free"))
    body = ctx.body
    assert decide(b.guard, ctx) is None
    assert "budget" not in ctx.extras and ctx.estimate is None and ctx.body is body and not ctx.json_changed
    run_complete(b.guard, ctx)
    assert b.guard.chunk(ctx, b"data: {}\n\n") is None


def test_the_worst_case_is_held_until_the_request_completes() -> None:
    b = Budgets()
    key = _tokens("10000/day")
    ctx = b.chat(key, max_tokens=100)
    assert decide(b.guard, ctx) is None
    name = counter_name("key:key_1", "tokens", "day", NOON)
    assert ctx.extras["budget"].names == [name] and name == "key:key_1|tokens|2025-08-20"
    assert b.state(name) == (0.0, _prompt(ctx) + 100)
    assert _sent(ctx)["max_tokens"] == 100 and "max_completion_tokens" not in _sent(ctx)  # untouched
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 10, 20
    run_complete(b.guard, ctx)
    assert b.state(name) == (30.0, 0.0) and "budget" not in ctx.extras
    run_complete(b.guard, ctx)  # once only
    assert b.state(name) == (30.0, 0.0)


def test_a_request_without_max_tokens_is_capped_at_its_hold_streams_included() -> None:
    b = Budgets()
    ctx = b.chat(_tokens("10000"))
    assert decide(b.guard, ctx) is None
    assert _sent(ctx)["max_completion_tokens"] == 100  # default_max_output_tokens
    assert ctx.json is not None and ctx.json["max_completion_tokens"] == 100
    # A stream too: the upstream stops there itself (hidden reasoning tokens included), and the
    # stream is watched as well.
    stream = b.chat(_tokens("10000"), stream=True)
    assert decide(b.guard, stream) is None
    assert _sent(stream)["max_completion_tokens"] == 100 and stream.extras["budget"].watch
    # A body with two caps has both set to the one held (the larger one was reserved)
    both = b.chat(_tokens("10000"), max_tokens=50, max_completion_tokens=70)
    assert decide(b.guard, both) is None
    assert (_sent(both)["max_tokens"], _sent(both)["max_completion_tokens"]) == (70, 70)


def test_n_outputs_are_held_and_clamped_per_output() -> None:
    b = Budgets()
    ctx = b.chat(_tokens("10000"), n=4, max_tokens=1000)
    assert decide(b.guard, ctx) is None
    assert b.held(ctx) == [(0.0, float(_prompt(ctx) + 4000))]
    # 1,000 tokens left: each of 4 outputs gets what a quarter of the room allows
    b = Budgets()
    small = b.chat(_tokens("1000"), n=4, max_tokens=1000)
    assert decide(b.guard, small) is None
    room = 1000 - (len(small.body) + 3) // 4
    sent = _sent(small)["max_tokens"]
    assert sent <= room // 4 and sent >= room // 4 - 1
    # fewer tokens left than outputs asked for: refused
    assert isinstance(decide(Budgets().guard, b.chat(_tokens("30"), n=50, max_tokens=1)), BudgetExceeded)


def test_the_output_is_clamped_to_what_is_left() -> None:
    b = Budgets()
    ctx = b.chat(_tokens("1000"), max_tokens=5000)
    prompt = _prompt(ctx)  # (of the body as sent: clamping rewrites it)
    assert decide(b.guard, ctx) is None
    assert _sent(ctx)["max_tokens"] == 1000 - prompt
    assert b.held(ctx) == [(0.0, 1000.0)]  # the whole budget, and no more
    # Nothing is left for the next one: its prompt alone does not fit.
    err = decide(b.guard, b.chat(_tokens("1000"), max_tokens=5))
    assert isinstance(err, BudgetExceeded)


def test_a_request_whose_prompt_does_not_fit_is_refused() -> None:
    b = Budgets()
    name = counter_name("key:key_1", "tokens", "day", NOON)
    b.counters.settle(name, 0.0, 290.0)
    err = decide(b.guard, b.chat(_tokens("300/day")))
    assert isinstance(err, BudgetExceeded) and err.status == 429
    assert err.type == "insufficient_quota" and err.code == "insufficient_quota"
    assert err.message == (
        "The key's day budget of 300 tokens is used up (or too little of it is left for this request)."
    )
    assert err.retry_after == period_end("day", NOON) == 12 * 3600
    assert dict(err.headers) == {"retry-after": str(12 * 3600), "x-should-retry": "false"}
    assert b.state(name) == (290.0, 0.0)  # nothing held


def test_a_lifetime_budget_suggests_a_day_and_a_team_budget_names_the_team() -> None:
    b = Budgets()
    team = Team("team_1", "crew", 0.0, {"budget_usd": {"amount": 0.5, "period": "week"}})
    key = key_record("key_1", {"budget_tokens": {"amount": 1, "period": "lifetime"}}, team_id="team_1")
    err = decide(b.guard, b.chat(key_record("key_2", {"budget_tokens": {"amount": 1}})))
    assert isinstance(err, BudgetExceeded) and err.retry_after == 86400
    assert "key's lifetime budget of 1 tokens" in err.message
    err = decide(b.guard, b.chat(key_record("key_3", team_id="team_1"), team))
    assert isinstance(err, BudgetExceeded) and err.message.startswith("The team's week budget of 0.5 US$")
    assert err.retry_after == period_end("week", NOON)
    assert isinstance(decide(b.guard, b.chat(key, team)), BudgetExceeded)


def test_key_and_team_budgets_are_all_held_or_none() -> None:
    b = Budgets()
    team = Team("team_1", "crew", 0.0, {"budget_usd": {"amount": 1000.0, "period": "month"}})
    key = key_record("key_1", {"budget_tokens": {"amount": 5000, "period": "day"}}, team_id="team_1")
    ctx = b.chat(key, team, max_tokens=10)
    assert decide(b.guard, ctx) is None
    prompt = _prompt(ctx)
    assert ctx.extras["budget"].names == ["key:key_1|tokens|2025-08-20", "team:team_1|usd|2025-08"]
    assert b.held(ctx) == [(0.0, prompt + 10.0), (0.0, prompt * 1.0 + 10 * 2.0)]
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 3, 4
    run_complete(b.guard, ctx)
    assert b.state("key:key_1|tokens|2025-08-20") == (7.0, 0.0)
    assert b.state("team:team_1|usd|2025-08") == (pytest.approx(3 * 1.0 + 4 * 2.0), 0.0)
    # The team's money runs short: the key's tokens are not held either.
    b.counters.settle("team:team_1|usd|2025-08", 0.0, 1000.0 - 11.0)
    refused = b.chat(key, team, max_tokens=10)
    assert isinstance(decide(b.guard, refused), BudgetExceeded)
    assert b.state("key:key_1|tokens|2025-08-20") == (7.0, 0.0)


def test_a_dollar_budget_clamps_by_the_output_price() -> None:
    b = Budgets()
    ctx = b.chat(_usd(1000.0), max_tokens=5000)
    prompt = _prompt(ctx)
    assert decide(b.guard, ctx) is None
    assert _sent(ctx)["max_tokens"] == (1000 - prompt) // 2  # $2 per output token
    assert b.held(ctx) == [(0.0, pytest.approx(prompt + 2.0 * ((1000 - prompt) // 2)))]


def test_a_model_priced_at_nothing_per_output_token_is_held_at_its_prompt() -> None:
    b = Budgets(prices={"free-output": {"input": 1_000_000, "output": 0}})
    ctx = b.chat(_usd(100.0), model="free-output", max_tokens=5000)
    assert decide(b.guard, ctx) is None
    assert _sent(ctx)["max_tokens"] == 5000 and b.held(ctx) == [(0.0, float(_prompt(ctx)))]
    b2 = Budgets(prices={"free-output": {"input": 1_000_000, "output": 0}})
    err = decide(b2.guard, b2.chat(_usd(1.0), model="free-output"))  # the prompt alone costs more
    assert isinstance(err, BudgetExceeded)


def test_an_unpriced_model_is_refused_under_a_dollar_budget_only() -> None:
    b = Budgets()
    err = decide(b.guard, b.chat(_usd(100.0), model="mystery-model"))
    assert isinstance(err, PermissionDenied) and err.status == 403 and err.code == "model_not_priced"
    assert err.param == "model"
    assert err.message == (
        "This key has a dollar budget and keygate has no price for model 'mystery-model' on this "
        "endpoint, so the request cannot be metered."
    )
    assert decide(b.guard, b.chat(_tokens("10000"), model="mystery-model")) is None  # tokens need no price
    priced = Budgets(default_price={"input": 1, "output": 1})
    assert decide(priced.guard, priced.chat(_usd(100.0), model="mystery-model")) is None


def test_endpoints_that_cannot_be_metered() -> None:
    b = Budgets(default_price={"input": 1, "output": 1})
    usd = _usd(100.0)
    # No model, nothing to meter: passes.
    models = context("GET", "/v1/models", key=usd)
    assert decide(b.guard, models) is None and "budget" not in models.extras
    # An endpoint billed per image, character or minute: refused under any budget, even with a
    # default price, with or without a model (OpenAI then picks a billed default).
    images = context("POST", "/v1/images/generations", json={"model": "dall-e-3", "prompt": "a cat"}, key=usd)
    err = decide(b.guard, images)
    assert isinstance(err, PermissionDenied) and err.code == "endpoint_not_priced"
    for body in ({"model": "dall-e-3", "prompt": "x"}, {"prompt": "x"}):
        tokens_only = context("POST", "/v1/images/generations", json=body, key=_tokens("10"))
        err = decide(b.guard, tokens_only)
        assert isinstance(err, PermissionDenied) and err.code == "endpoint_not_priced"
    speech = context("POST", "/v1/audio/speech", json={"input": "hi", "voice": "alloy"}, key=usd)
    assert isinstance(decide(b.guard, speech), PermissionDenied)
    # Free endpoints with a model pass, and so do stored responses
    moderation = context(
        "POST", "/v1/moderations", json={"model": "omni-moderation-latest", "input": "x"}, key=usd
    )
    assert decide(b.guard, moderation) is None
    stored = context("GET", "/v1/responses/resp_1", key=usd)
    assert decide(b.guard, stored) is None and "budget" not in stored.extras


def test_embeddings_are_held_at_their_prompt_with_no_output() -> None:
    b = Budgets()
    ctx = context(
        "POST",
        "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x" * 400},
        key=_tokens("1000"),
    )
    ctx.ts = NOON
    assert decide(b.guard, ctx) is None
    assert b.held(ctx) == [(0.0, float(_prompt(ctx)))] and "max_tokens" not in _sent(ctx)
    ctx.usage.prompt_tokens = 100
    run_complete(b.guard, ctx)
    assert b.state("key:key_1|tokens|lifetime") == (100.0, 0.0)


def test_settled_dollars_price_cached_prompt_tokens_at_the_cached_price() -> None:
    b = Budgets()
    ctx = b.chat(_usd(10_000.0), max_tokens=10)
    assert decide(b.guard, ctx) is None
    ctx.usage.prompt_tokens, ctx.usage.cached_tokens, ctx.usage.completion_tokens = 100, 40, 10
    run_complete(b.guard, ctx)
    assert b.state("key:key_1|usd|lifetime") == (pytest.approx(60 * 1.0 + 40 * 0.5 + 10 * 2.0), 0.0)
    odd = b.chat(_usd(10_000.0), max_tokens=10)
    assert decide(b.guard, odd) is None
    odd.usage.prompt_tokens, odd.usage.cached_tokens = 10, 50  # more cached than sent: all 10 cached
    run_complete(b.guard, odd)
    assert b.state("key:key_1|usd|lifetime") == (pytest.approx(100.0 + 10 * 0.5), 0.0)


def test_a_stream_past_its_hold_is_cut_off_and_counted_by_its_own_estimate() -> None:
    b = Budgets()
    ctx = b.chat(_tokens("10000"), stream=True, max_tokens=2)
    assert decide(b.guard, ctx) is None
    res: Reservation = ctx.extras["budget"]
    assert res.watch and res.output == 2
    for streamed in (1, 2):
        ctx.usage.streamed = streamed
        assert b.guard.chunk(ctx, b"data: {}\n\n") is None
    ctx.usage.streamed = 3
    cut = b.guard.chunk(ctx, b"data: {}\n\n")
    assert isinstance(cut, BudgetExceeded) and cut.code == "budget_exceeded" and res.cut
    assert (
        cut.message == "The stream was cut off: it went past the output tokens its budget reservation allows."
    )
    ctx.status, ctx.upstream = 200, UPSTREAM
    run_complete(b.guard, ctx)  # no usage chunk came: charged what was held, as an estimate
    assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (_prompt(ctx), 2)
    assert ctx.usage.estimated
    assert b.state("key:key_1|tokens|lifetime") == (float(_prompt(ctx) + 2), 0.0)


@pytest.mark.parametrize(("status", "charged"), [(200, True), (499, True), (400, False), (500, False)])
def test_a_request_without_usage_is_charged_its_reservation(status: int, charged: bool) -> None:
    b = Budgets()
    ctx = b.chat(_tokens("10000"), max_tokens=50)
    assert decide(b.guard, ctx) is None
    ctx.status, ctx.upstream = status, UPSTREAM
    ctx.usage.streamed = 3  # what a stream showed is not what it cost
    run_complete(b.guard, ctx)
    held = _prompt(ctx) + 50
    assert b.state("key:key_1|tokens|lifetime") == (float(held if charged else 0), 0.0)
    assert ctx.usage.estimated is charged
    # reported usage is what counts, whatever else happened
    ok = b.chat(_tokens("10000"), max_tokens=50)
    assert decide(b.guard, ok) is None
    ok.status, ok.upstream = status, UPSTREAM
    fill_usage({"prompt_tokens": 7, "completion_tokens": 0}, ok.usage)
    run_complete(b.guard, ok)
    assert b.state("key:key_1|tokens|lifetime") == (float((held if charged else 0) + 7), 0.0)


def test_background_responses_are_refused_under_a_budget() -> None:
    b = Budgets(prices={"gpt-4o-mini": {"input": 1, "output": 1}})
    for value in (True, "true", 1):
        ctx = context(
            "POST",
            "/v1/responses",
            json={"model": "gpt-4o-mini", "input": "x", "background": value},
            key=_usd(10),
        )
        err = decide(b.guard, ctx)
        assert isinstance(err, InvalidRequest) and err.code == "background_not_allowed_with_budget"
        assert err.param == "background"
    fg = context(
        "POST",
        "/v1/responses",
        json={"model": "gpt-4o-mini", "input": "x", "background": False},
        key=_usd(10),
    )
    assert decide(b.guard, fg) is None


def test_service_tiers_scale_the_price_or_are_refused() -> None:
    b = Budgets()  # $1 per prompt token, $2 per completion token
    for tier, factor in ((None, 1.0), ("default", 1.0), ("flex", 0.5), ("priority", 2.0)):
        extra = {} if tier is None else {"service_tier": tier}
        ctx = b.chat(_usd(1e9), max_tokens=10, **extra)
        assert decide(b.guard, ctx) is None
        res: Reservation = ctx.extras["budget"]
        assert res.amounts == [pytest.approx((_prompt(ctx) * 1 + 10 * 2) * factor)]
    for tier in ("scale", 7):
        err = decide(b.guard, b.chat(_usd(1e9), service_tier=tier))
        assert isinstance(err, PermissionDenied) and err.code == "service_tier_not_priced"
    # configurable; token budgets need no tier price
    mine = Budgets(service_tiers={"scale": 1.0, "auto": 2.0})
    ctx = mine.chat(_usd(1e9), max_tokens=10, service_tier="scale")
    assert decide(mine.guard, ctx) is None
    auto = mine.chat(_usd(1e9), max_tokens=10)
    assert decide(mine.guard, auto) is None
    assert auto.extras["budget"].amounts == [pytest.approx((_prompt(auto) + 20) * 2.0)]
    assert decide(b.guard, b.chat(_tokens("1000"), service_tier="scale")) is None


def test_variants_are_not_priced_as_their_base() -> None:
    b = Budgets(prices={"o1": {"input": 1, "output": 1}})
    for model in ("o1-preview-x", "o1-turbo", "o1-2024-12-17-ft"):
        err = decide(b.guard, b.chat(_usd(100.0), model=model))
        assert isinstance(err, PermissionDenied) and err.code == "model_not_priced", model
    assert decide(b.guard, b.chat(_usd(100.0), model="o1-2024-12-17")) is None


def test_only_streams_on_counted_routes_are_watched() -> None:
    b = Budgets()
    plain = b.chat(_tokens("10000"), max_tokens=2)
    assert decide(b.guard, plain) is None
    plain.usage.streamed = 50
    assert b.guard.chunk(plain, b"x") is None  # not a stream: its max tokens bound it already
    b = Budgets()
    reported = b.chat(_tokens("10000"), stream=True, max_tokens=5)
    assert decide(b.guard, reported) is None
    reported.usage.streamed, reported.usage.prompt_tokens, reported.usage.completion_tokens = 4, 9, 4
    run_complete(b.guard, reported)  # the usage chunk came: its counts are kept
    assert b.state("key:key_1|tokens|lifetime") == (13.0, 0.0)


def test_a_new_period_starts_from_nothing() -> None:
    b = Budgets()
    key = _tokens("500/day")
    today = b.chat(key, max_tokens=10)
    assert decide(b.guard, today) is None
    today.usage.prompt_tokens, today.usage.completion_tokens = 480, 10
    run_complete(b.guard, today)
    assert isinstance(decide(b.guard, b.chat(key, max_tokens=10)), BudgetExceeded)
    tomorrow = b.chat(key, ts=NOON + 86400, max_tokens=10)
    assert decide(b.guard, tomorrow) is None
    assert tomorrow.extras["budget"].names == ["key:key_1|tokens|2025-08-21"]
    # The clock went back (or a request of the old day arrived late): the old day's counter again.
    assert isinstance(decide(b.guard, b.chat(key, ts=NOON + 60, max_tokens=10)), BudgetExceeded)


def test_the_soft_threshold_is_told_once_per_counter() -> None:
    b = Budgets(soft_threshold=0.5)
    key = _tokens("1000/day")
    with logged("keygate.budget") as records:
        for used in (300, 300, 300):  # 300, 600 (crosses 500), 900
            ctx = b.chat(key, max_tokens=1)
            assert decide(b.guard, ctx) is None
            ctx.usage.prompt_tokens = used
            run_complete(b.guard, ctx)
        tomorrow = b.chat(key, ts=NOON + 86400, max_tokens=1)  # a new period's counter: told again
        assert decide(b.guard, tomorrow) is None
        tomorrow.usage.prompt_tokens = 600
        run_complete(b.guard, tomorrow)
    notices = [r.budget_notice for r in records if r.getMessage() == "budget soft threshold reached"]  # type: ignore[attr-defined]
    assert len(notices) == 2
    assert notices[0] == {
        "event": "budget.soft_threshold",
        "scope": "key",
        "id": "key_1",
        "name": "app",
        "kind": "tokens",
        "period": "day",
        "counter": "key:key_1|tokens|2025-08-20",
        "spent": 600.0,
        "budget": 1000.0,
        "threshold": 0.5,
    }
    assert notices[1]["counter"] == "key:key_1|tokens|2025-08-21" and notices[1]["spent"] == 600.0


def test_plans_and_prices_are_cached() -> None:
    b = Budgets()
    key = _usd(10.0, "month")
    (budget,) = b.guard.budgets(key, None)
    assert (budget.scope, budget.kind, budget.amount, budget.period) == ("key:key_1", "usd", 10.0, "month")
    assert b.guard.budgets(key, None)[0] is budget  # the same plan for the same record
    assert b.guard.budgets(_usd(20.0), None)[0].amount == 20.0  # a changed record: a new plan
    # Many dated model names: the price cache stays bounded and keeps answering right.
    mini = parse_limits({"prices": PRICES}).prices["gpt-4o-mini"]
    rich = _usd(1e6)
    for day in range(4100):
        date = datetime.date(2020, 1, 1) + datetime.timedelta(days=day)
        ctx = b.chat(rich, model=f"gpt-4o-mini-{date:%Y-%m-%d}", max_tokens=1)
        assert b.guard.request(ctx) is None  # (the plain guard: no event loop needed)
        assert ctx.extras["budget"].price == mini
    ctx = b.chat(rich, model="gpt-4o-mini-2020-01-01", max_tokens=1)  # asked before the cache cleared
    assert b.guard.request(ctx) is None and ctx.extras["budget"].price == mini


def test_the_awaiting_guard_decides_as_the_plain_one() -> None:
    outcomes = []
    for counters in (MemoryCounters(), AwaitingCounters()):
        b = Budgets(counters)
        assert isinstance(
            b.guard, AsyncBudgetGuard if isinstance(counters, AwaitingCounters) else BudgetGuard
        )
        seen: list[object] = []
        for ctx in (
            b.chat(key_record("free")),
            b.chat(_usd(100.0), model="mystery-model"),
            b.chat(_tokens("1000"), max_tokens=5000),
            b.chat(_tokens("1000"), max_tokens=5),
        ):
            err = decide(b.guard, ctx)
            seen.append((err.code if err is not None else None, _sent(ctx).get("max_tokens")))
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert [code for code, _ in outcomes[0]] == [None, "model_not_priced", None, "insufficient_quota"]


def test_the_awaiting_guard_refuses_what_another_request_took_meanwhile() -> None:
    counters = AwaitingCounters()
    b = Budgets(counters)
    key = _tokens("1000")
    b.counters.inner.reserve_now(["key:key_1|tokens|lifetime"], [1000.0], [500.0])  # held elsewhere

    async def both() -> list[object]:
        one, two = b.chat(key, max_tokens=600), b.chat(key, max_tokens=600)
        # Each sees 500 left and clamps to it; the second to hold finds the first took it.
        found = await asyncio.gather(b.guard.request(one), b.guard.request(two))  # type: ignore[arg-type]
        return [*found, _sent(one)["max_tokens"]]

    first, second, clamped = asyncio.run(both())
    assert first is None and isinstance(second, BudgetExceeded)
    assert clamped == 500 - _prompt(b.chat(key, max_tokens=600))
    assert b.counters.inner.available_now(["key:key_1|tokens|lifetime"]) == [(0.0, 1000.0)]


def test_start_and_stop_run_the_spend_book_and_the_notifier() -> None:
    hook = Hook()
    try:
        b = Budgets(soft_threshold=0.5, webhook_url=hook.url)

        async def run() -> None:
            await b.guard.start()
            ctx = b.chat(_tokens("100"), max_tokens=1)
            assert await run_request(b.guard, ctx) is None
            ctx.usage.prompt_tokens = 60
            b.guard.complete(ctx)
            deadline = time.monotonic() + 5
            while not hook.received:
                assert time.monotonic() < deadline, "no webhook call"
                await asyncio.sleep(0.01)
            await b.guard.stop()

        asyncio.run(run())
        assert [h["spent"] for h in hook.received] == [60.0]
    finally:
        hook.close()


# -- through a real gateway ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


def _config(hook_url: str, **more: Any) -> dict[str, Any]:
    return {
        "limits": {
            "default_max_output_tokens": 1,
            "soft_threshold": 0.5,
            "webhook_url": hook_url,
            "prices": PRICES,
            **more,
        }
    }


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, hook: Hook, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """No price for models outside the shipped table and PRICES."""
    with Gateway(tmp_path_factory.mktemp("budgets"), upstream.url, extra=_config(hook.url)) as g:
        yield g
    assert_no_secret_written(g.written_files(), g.secrets)


@pytest.fixture(scope="module")
def gw_dflt(
    upstream: MockUpstream, hook: Hook, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """$3 per prompt token, $4 per completion token for any model without a price."""
    extra = _config(hook.url, default_price={"input": 3_000_000, "output": 4_000_000})
    g = Gateway(tmp_path_factory.mktemp("budgets-dflt"), upstream.url, extra=extra).start()
    try:
        yield g
    finally:
        g.stop()
    assert_no_secret_written(g.written_files(), g.secrets)


def _cli(g: Gateway | ProcessGateway, *args: str) -> str:
    """A CLI command for ``g``'s config, in this process (also for a gateway that is a process)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["--config", str(g.config_path), *args], g.env)
    assert code == 0, err.getvalue()
    return out.getvalue()


def _budgets(g: Gateway | ProcessGateway, ident: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(_cli(g, "usage", "--budgets", "--json"))
    return [r for r in rows if r["id"] == ident]


def _row(g: Gateway, ident: str, kind: str) -> dict[str, Any]:
    return next(r for r in _budgets(g, ident) if r["kind"] == kind)


def _wait_spent(
    g: Gateway | ProcessGateway, key_id: str, predicate: Any, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _budgets(g, key_id)
        if rows and predicate(rows[0]):
            return rows[0]
        assert time.monotonic() < deadline, f"budget never matched: {rows}"
        time.sleep(0.05)


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


def _post(g: Gateway | ProcessGateway, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{g.url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_token_budget_refuses_once_spent(gw: Gateway, mock: MockUpstream, hook: Hook) -> None:
    key = gw.create_key("tok", "--budget-tokens", "300/day")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=2)
    client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"  # the SDK did not retry
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert len(mock.requests) == 1
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] == 201)  # 200 prompt + 1 completion
    assert row["budget"] == 300 and row["period"] == "day" and row["in_flight"] == 0
    # 201 of 300 passed the 50% soft threshold: one webhook call, no secret in it
    (call,) = _hooks_for(hook, key["id"])
    assert call["event"] == "budget.soft_threshold" and call["name"] == "tok" and call["budget"] == 300
    assert "kg_" not in json.dumps(call)


def test_max_output_tokens_are_clamped_to_the_budget(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("clamp", "--budget-tokens", "1000/lifetime")["key"]
    assert _post(gw, key, max_tokens=5000).status_code == 200
    sent = mock.requests[-1].json()["max_tokens"]
    assert 900 < sent < 1000


def test_non_streamed_request_is_capped_at_its_reservation(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("cap", "--budget-tokens", "1000/lifetime")["key"]
    assert _post(gw, key).status_code == 200
    assert mock.requests[-1].json()["max_completion_tokens"] == 1  # the configured default


def test_unpriced_model_under_dollar_budget_is_refused(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("usd", "--budget-usd", "100/month")["key"]
    refused = _post(gw, key, model="mystery-model")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_priced"
    assert mock.requests == []


def test_embedding_without_price_is_refused_under_a_dollar_budget(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("embed-np", "--budget-usd", "1/day")["key"]
    refused = httpx.post(
        f"{gw.url}/embeddings",
        json={"model": "my-embedder", "input": "hello"},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_priced"
    assert mock.requests == []


def _chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
    }


def _tool_delta(piece: str, first: bool = False) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
    if first:
        call.update(id="call_1", type="function", function={"name": "f", "arguments": ""})
    return _chunk({"tool_calls": [call]})


def test_a_stream_is_sent_with_its_output_capped(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("cap-stream", "--budget-tokens", "1000/day")["key"]
    client = OpenAI(base_url=gw.url, api_key=key, max_retries=0)
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        pass
    assert mock.requests[-1].json()["max_completion_tokens"] == 1  # default_max_output_tokens
    for _ in client.responses.create(model="gpt-4o-mini", input="hi", stream=True):
        pass
    assert mock.requests[-1].json()["max_output_tokens"] == 1


def test_hidden_reasoning_tokens_are_held_to_the_reservation_by_the_cap(
    gw: Gateway, mock: MockUpstream
) -> None:
    # The mock's reasoning models think 300 tokens that no stream shows, within the output cap
    key = gw.create_key("think", "--budget-tokens", "100000/day")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    for _ in client.chat.completions.create(model="o3-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        pass
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    assert entry["completion_tokens"] == 1 and not entry["estimated"]  # the reservation: 1 token
    answer = client.responses.create(model="o3-mini", input="hi", max_output_tokens=50)
    assert answer.usage is not None and answer.usage.output_tokens_details.reasoning_tokens == 50
    _wait_spent(gw, key["id"], lambda r: r["spent"] == entry["prompt_tokens"] + 1 + 1 + 50)


def test_a_stream_of_tool_call_deltas_past_its_reservation_is_cut_off(
    gw: Gateway, mock: MockUpstream
) -> None:
    key = gw.create_key("cut", "--budget-tokens", "100000/day")
    # An upstream that ignores the cap: 312 tool-call argument deltas (and refusals) against 200
    events: list[Any] = [_tool_delta("", first=True)]
    events += [_tool_delta('{"a":') for _ in range(150)] + [_chunk({"refusal": "no"}) for _ in range(162)]
    mock.reply_next(events=[*events, "data: [DONE]"])
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    seen = 0
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_completion_tokens=200,
        ):
            seen += 1
    assert "cut off" in str(info.value)
    assert seen <= 202  # the first (name only) chunk, 200 deltas, and the one that went past
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    # no usage came: charged its reservation (200 output tokens), and the row says so
    assert entry["completion_tokens"] == 200 and entry["error_code"] == "budget_exceeded"
    assert entry["estimated"] is True
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] > 0)
    assert row["spent"] == entry["prompt_tokens"] + 200 and row["in_flight"] == 0


@pytest.mark.parametrize(
    "reply",
    [
        {"events": [_chunk({"content": "a"}), _chunk({"content": "b"}), "data: [DONE]"]},  # no usage chunk
        {"body": b"<html>not json</html>"},
        {"body": {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}},  # no usage
    ],
)
def test_an_answer_without_usage_is_charged_its_reservation(
    gw: Gateway, mock: MockUpstream, reply: dict[str, Any]
) -> None:
    key = gw.create_key("no-usage", "--budget-tokens", "100000/day")
    mock.reply_next(**reply)
    stream = "events" in reply
    r = httpx.post(
        f"{gw.url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 50, "stream": stream},
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=30,
    )
    assert r.status_code == 200
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    assert entry["completion_tokens"] == 50 and entry["prompt_tokens"] > 0 and entry["estimated"] is True
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] > 0)
    assert row["spent"] == entry["prompt_tokens"] + 50
    shown = {u["key_id"]: u for u in json.loads(_cli(gw, "usage", "--json"))}[key["id"]]
    assert shown["estimated"] == 1 and shown["completion_tokens"] == 50


def test_a_client_that_leaves_is_charged_its_reservation(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("gone", "--budget-tokens", "100000/day")
    mock.fail_next("slow", delay=0.3)
    with httpx.stream(
        "POST",
        f"{gw.url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 70, "stream": True},
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=30,
    ) as stream:
        assert stream.status_code == 200
        next(stream.iter_raw())  # one event, then leave
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    assert entry["status"] == 499 and entry["completion_tokens"] == 70 and entry["estimated"] is True
    _wait_spent(gw, key["id"], lambda r: r["spent"] == entry["prompt_tokens"] + 70 and r["in_flight"] == 0)


def test_client_metadata_cannot_hide_the_usage_of_a_response(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("meta", "--budget-tokens", "100000/day")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    answer = client.responses.create(
        model="gpt-4o-mini", input="a " * 300, metadata={"usage": "x"}, max_output_tokens=3
    )
    assert answer.usage is not None and answer.usage.input_tokens == 300
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["estimated"]) == (300, 3, False)
    _wait_spent(gw, key["id"], lambda r: r["spent"] == 303)


def test_images_and_outputs_asked_for_are_held_at_their_worst_case(gw: Gateway, mock: MockUpstream) -> None:
    made = gw.create_key("media", "--budget-tokens", "10000/day")
    key = made["key"]
    gw.cli("objects", "assign", "file-abc", "--key", made["id"])  # (a file keygate did not make)
    url = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    fifty = [{"role": "user", "content": [{"type": "text", "text": "describe"}, *[url] * 50]}]
    r = _post(gw, key, messages=fifty)
    assert len(r.content) and r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    file = {"type": "file", "file": {"file_id": "file-abc"}}
    r = _post(gw, key, messages=[{"role": "user", "content": [file]}])
    assert r.status_code == 400 and r.json()["error"]["code"] == "file_input_not_metered"
    assert mock.requests == []
    # n=20 outputs of up to 1,000 tokens: each is clamped to a twentieth of what is left
    assert _post(gw, key, n=20, max_tokens=1000).status_code == 200
    assert mock.requests[-1].json()["max_tokens"] < 500


def test_background_responses_are_refused_and_stored_ones_cost_nothing(
    gw: Gateway, mock: MockUpstream
) -> None:
    key = gw.create_key("bg", "--budget-usd", "100/day")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-4o-mini", input="hi", background=True)
    assert info.value.code == "background_not_allowed_with_budget"
    assert mock.requests == []
    # Retrieving a stored response is never charged and needs no price, whatever it reports
    gw.cli("objects", "assign", "resp_1", "--key", key["id"])  # (made elsewhere: assigned)
    stored = {
        "id": "resp_1",
        "object": "response",
        "model": "o1-pro-unpriced",
        "status": "completed",
        "output": [],
        "usage": {"input_tokens": 1000, "output_tokens": 1000, "total_tokens": 2000},
    }
    mock.reply_next(200, stored)
    got = httpx.get(
        f"{gw.url}/responses/resp_1", headers={"authorization": f"Bearer {key['key']}"}, timeout=30
    )
    assert got.status_code == 200 and got.json()["id"] == "resp_1"
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"] and e["method"] == "GET")
    assert entry["prompt_tokens"] == 0 and not entry["estimated"]
    assert all(r["spent"] == 0 and r["in_flight"] == 0 for r in _budgets(gw, key["id"]))


def test_variants_tiers_and_snapshots_under_a_dollar_budget(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("prices", "--budget-usd", "1000/day")
    # a variant is not priced as its base (gpt-4o-mini is priced in this gateway; these are not)
    for model in ("gpt-4o-mini-search-preview", "o3-deep-research", "gpt-4o-mini-pro"):
        r = _post(gw, key["key"], model=model)
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_priced", model
    r = _post(gw, key["key"], service_tier="scale")
    assert r.status_code == 403 and r.json()["error"]["code"] == "service_tier_not_priced"
    assert mock.requests == []
    # a dated snapshot takes its model's price ($1 per prompt, $2 per completion token), and flex
    # costs half: 1 prompt + 1 completion = $3, halved
    assert _post(gw, key["key"], model="gpt-4o-mini-2024-07-18", service_tier="flex").status_code == 200
    _wait_spent(gw, key["id"], lambda r: r["spent"] == pytest.approx(1.5) and r["in_flight"] == 0)


def test_non_token_endpoints_are_refused_under_any_budget(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("img-tok", "--budget-tokens", "100000/day")["key"]
    for path, body in (
        ("/images/generations", {"prompt": "a cat"}),  # no model: OpenAI picks a billed default
        ("/images/generations", {"model": "dall-e-3", "prompt": "a cat"}),
        ("/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"}),
    ):
        r = httpx.post(f"{gw.url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "endpoint_not_priced", path
    assert mock.requests == []


def test_unpriced_model_is_metered_at_the_default_price(gw_dflt: Gateway, mock: MockUpstream) -> None:
    key = gw_dflt.create_key("dflt", "--budget-usd", "100/month")
    client = OpenAI(base_url=gw_dflt.url, api_key=key["key"], max_retries=0)
    answer = client.chat.completions.create(model="mystery-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.prompt_tokens == 1
    assert [r.json()["model"] for r in mock.requests] == ["mystery-model"]
    # capped at its reservation (default_max_output_tokens: 1): 1 prompt ($3) + 1 completion ($4)
    assert mock.requests[-1].json()["max_completion_tokens"] == 1
    row = _wait_spent(gw_dflt, key["id"], lambda r: r["spent"] > 0)
    assert row["spent"] == pytest.approx(7.0) and row["kind"] == "usd" and row["in_flight"] == 0


def test_default_price_does_not_open_non_token_endpoints(gw_dflt: Gateway, mock: MockUpstream) -> None:
    key = gw_dflt.create_key("img", "--budget-usd", "100/month")["key"]
    client = OpenAI(base_url=gw_dflt.url, api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.images.generate(model="dall-e-3", prompt="a cat")
    assert info.value.code == "endpoint_not_priced"
    assert mock.requests == []
    assert len(client.models.list().data) > 0  # no model, nothing to meter: passes


def test_week_budget_accumulates_within_the_iso_week(gw_dflt: Gateway, mock: MockUpstream) -> None:
    week_before = _iso_week()
    key = gw_dflt.create_key("weekly", "--budget-tokens", "500/week")
    client = OpenAI(base_url=gw_dflt.url, api_key=key["key"], max_retries=2)
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
    row = _wait_spent(gw_dflt, key["id"], lambda r: r["spent"] == 402)  # 2 x (200 prompt + 1 completion)
    assert row["period"] == "week" and row["budget"] == 500 and row["in_flight"] == 0
    assert row["period_key"] in {week_before, _iso_week()}  # (the test may straddle Monday 00:00)


def test_team_budget_is_shared_and_refuses_every_key(
    gw_dflt: Gateway, mock: MockUpstream, hook: Hook
) -> None:
    gw = gw_dflt
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


def test_embeddings_are_charged_at_the_embedding_models_price(gw_dflt: Gateway, mock: MockUpstream) -> None:
    key = gw_dflt.create_key("embed", "--budget-usd", "1/day")
    client = OpenAI(base_url=gw_dflt.url, api_key=key["key"], max_retries=0)
    text = "word " * 5000  # the mock counts 5,000 prompt tokens
    small = client.embeddings.create(model="text-embedding-3-small", input=text)
    assert small.usage.prompt_tokens == 5000
    # shipped price of text-embedding-3-small: $0.02 per million tokens
    _wait_spent(gw_dflt, key["id"], lambda r: r["spent"] == pytest.approx(0.0001))
    client.embeddings.create(model="text-embedding-3-large", input=text)
    # plus text-embedding-3-large at $0.13 per million: another $0.00065
    row = _wait_spent(gw_dflt, key["id"], lambda r: r["spent"] == pytest.approx(0.00075))
    assert row["in_flight"] == 0 and row["kind"] == "usd"
    assert [r.json()["model"] for r in mock.requests] == ["text-embedding-3-small", "text-embedding-3-large"]


def test_soft_threshold_fires_once_per_period_without_secrets(
    gw_dflt: Gateway, mock: MockUpstream, hook: Hook
) -> None:
    gw = gw_dflt
    key = gw.create_key("soft-once", "--budget-tokens", "1000/day")
    for _ in range(4):  # spent 201, 402, 603 (crosses 500), 804
        assert _post(gw, key["key"], messages=WORDY).status_code == 200
    _wait_spent(gw, key["id"], lambda r: r["spent"] == 804)
    # A later key crossing its own threshold: its notice is sent after any second one for the first.
    sentinel = gw.create_key("soft-sentinel", "--budget-tokens", "300/day")
    assert _post(gw, sentinel["key"], messages=WORDY).status_code == 200
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


def test_dollar_spend_survives_a_restart(upstream: MockUpstream, mock: MockUpstream, tmp_path: Path) -> None:
    g = Gateway(tmp_path, upstream.url, extra=_config("http://127.0.0.1:9/unused")).start()
    try:
        key = g.create_key("persist", "--budget-usd", "50/month")
        assert _post(g, key["key"]).status_code == 200  # 1 prompt ($1) + 1 completion ($2)
        assert g.stop() == 0  # graceful: the last batch is flushed at shutdown
        assert _budgets(g, key["id"])[0]["spent"] == 3
        g.start()
        assert _post(g, key["key"]).status_code == 200
        _wait_spent(g, key["id"], lambda r: r["spent"] == 6)
    finally:
        g.stop()
    assert _budgets(g, key["id"])[0]["spent"] == 6
    assert_no_secret_written(g.written_files(), g.secrets)


def test_holds_in_flight_at_a_crash_count_as_spent(
    upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    g = ProcessGateway(tmp_path, upstream.url, extra=_config("http://127.0.0.1:9/unused")).start()
    try:
        key = json.loads(_cli(g, "keys", "create", "--name", "persist", "--budget-usd", "45/month", "--json"))
        g.secrets.append(key["key"])
        for _ in range(2):
            assert _post(g, key["key"]).status_code == 200  # 1 prompt ($1) + 1 completion ($2)
        _wait_spent(g, key["id"], lambda r: r["spent"] == 6)
        # A crash with a request in flight: its hold is counted at its worst case after restart.
        mock.fail_next("slow", delay=5.0)
        with httpx.stream(
            "POST",
            f"{g.url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
            headers={"authorization": f"Bearer {key['key']}"},
            timeout=30,
        ) as stream:
            assert stream.status_code == 200
            held = _wait_spent(g, key["id"], lambda r: r["in_flight"] > 0)
            assert g.proc is not None
            g.proc.send_signal(signal.SIGKILL)
            g.proc.wait()
            g.proc = None
        g.start()
        # $6 spent + the stream's hold (~$22) + this request's prompt estimate (~$17) > $45
        refused = _post(g, key["key"])
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "insufficient_quota"
        after = _budgets(g, key["id"])[0]
        assert after["spent"] >= 6 + held["in_flight"] and after["in_flight"] == 0
    finally:
        g.stop()
    assert_no_secret_written(g.written_files(), g.secrets)
