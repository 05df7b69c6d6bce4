"""Per-key and per-team rate limits and concurrency caps: the guard in process (plans, headers,
refusals, token correction, the awaiting variant), then through a real keygate and the mock
upstream (SDK errors, team sharing, streams in flight, upstream 429s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from keygate.chain import Guard
from keygate.context import Context
from keygate.counters import MemoryCounters, Rate, SyncCounters
from keygate.errors import RateLimited
from keygate.guards.budget import AsyncBudgetGuard, BudgetGuard, budget_guard
from keygate.guards.ratelimit import AsyncRateLimit, Plan, RateLimit, compile_plan, fmt_reset, rate_limit
from keygate.headers import filter_response
from keygate.limitconf import parse_limits
from keygate.spend import SpendBook
from keygate.testing import MockUpstream, context, key_record, run_complete
from keygate.types import KeyRecord, Team

from ..helpers import Gateway
from .common import AwaitingCounters, decide, post_many

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


def _guard(counters: Any = None, **limits: Any) -> RateLimit | AsyncRateLimit:
    return rate_limit(counters if counters is not None else MemoryCounters(), parse_limits(limits))


def _chat(key: KeyRecord, team: Team | None = None, **body: Any) -> Context:
    return context(json={**CHAT, **body}, key=key, team=team)


def _headers(ctx: Context) -> dict[str, str]:
    assert ctx.limit_headers is not None
    return dict(ctx.limit_headers[1])


# -- plans ---------------------------------------------------------------------------------------


def test_a_plan_compiles_key_team_and_default_limits_into_separate_counters() -> None:
    key = key_record("key_1", {"rpm": 5, "tpm": 1000, "max_concurrent": 2, "rph": 0})
    team = Team("team_1", "crew", 0.0, {"rpd": 100, "max_concurrent": 10, "models": ["gpt-4o"]})
    plan = compile_plan(key, team, {"rpm": 60, "rps": 2})
    # The key's own rpm replaces the default; a 0 is no limit; defaults never apply to the team.
    assert plan.requests == [
        Rate("k:key_1:rps", 2, 1.0),
        Rate("k:key_1:rpm", 5, 60.0),
        Rate("t:team_1:rpd", 100, 86400.0),
    ]
    assert plan.tokens == [Rate("k:key_1:tpm", 1000, 60.0, "tokens")]
    assert plan.gates == [("k:key_1:conc", 2), ("t:team_1:conc", 10)]
    assert plan.gate_names == ["k:key_1:conc", "t:team_1:conc"] and not plan.empty
    assert plan.costs(30) == [1.0, 1.0, 1.0, 30.0] and plan.costs(30) is plan.costs(30)
    assert plan.costs(7) == [1.0, 1.0, 1.0, 7.0]
    assert plan.replaces == frozenset(
        f"x-ratelimit-{part}-{kind}"
        for part in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    )
    assert compile_plan(key_record("k", {"budget_usd": {"amount": 1}}), None, {}).empty


def test_a_plan_is_made_once_per_key_record() -> None:
    guard = _guard()
    key = key_record("key_1", {"rpm": 5})
    team = Team("team_1", "crew", 0.0, {"rpm": 50})
    plan = guard.plan(key, None)
    assert guard.plan(key, None) is plan
    # A changed record (keys update, a new team policy) is a new object: its plan is made again.
    changed = key_record("key_1", {"rpm": 6})
    assert guard.plan(changed, None) is not plan and guard.plan(changed, None).requests[0].limit == 6
    with_team = guard.plan(changed, team)
    assert [r.name for r in with_team.requests] == ["k:key_1:rpm", "t:team_1:rpm"]


def test_a_key_without_limits_costs_nothing() -> None:
    guard = _guard()
    ctx = _chat(key_record("free"))
    assert decide(guard, ctx) is None
    assert ctx.limit_headers is None and "ratelimit" not in ctx.extras and ctx.estimate is None
    run_complete(guard, ctx)  # nothing was taken: nothing to give back


# -- requests ------------------------------------------------------------------------------------


def test_requests_per_minute_refuse_with_openai_headers() -> None:
    guard = _guard()
    key = key_record("key_1", {"rpm": 2})
    first, second, third = (_chat(key) for _ in range(3))
    assert decide(guard, first) is None and decide(guard, second) is None
    assert _headers(first) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s",
    }
    assert _headers(second)["x-ratelimit-remaining-requests"] == "0"
    assert second.limit_headers is not None and second.limit_headers[0] == frozenset(
        {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}
    )
    err = decide(guard, third)
    assert isinstance(err, RateLimited) and err.status == 429 and err.code == "rate_limit_exceeded"
    assert err.message == "Rate limit reached for requests per minute: limit 2. Please try again in 30s."
    assert dict(err.headers) == {
        "retry-after": "30",
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert third.limit_headers is None and "ratelimit" not in third.extras


@pytest.mark.parametrize(("name", "unit"), [("rps", "second"), ("rph", "hour"), ("rpd", "day")])
def test_each_request_period_names_its_unit(name: str, unit: str) -> None:
    guard = _guard()
    key = key_record("key_1", {name: 1})
    assert decide(guard, _chat(key)) is None
    err = decide(guard, _chat(key))
    assert isinstance(err, RateLimited)
    assert err.message.startswith(f"Rate limit reached for requests per {unit}: limit 1.")


def test_the_stricter_of_key_and_team_limit_decides_and_the_team_is_shared() -> None:
    guard = _guard()
    team = Team("team_1", "crew", 0.0, {"rpm": 2})
    a = key_record("a", {"rpm": 100}, team_id="team_1")
    b = key_record("b", {"rpm": 100}, team_id="team_1")
    assert decide(guard, _chat(a, team)) is None
    assert decide(guard, _chat(b, team)) is None
    for key in (a, b):
        assert isinstance(decide(guard, _chat(key, team)), RateLimited)
    # A key with a tighter limit than its team's is refused by its own.
    tight = key_record("c", {"rpm": 1}, team_id="team_2")
    roomy = Team("team_2", "big", 0.0, {"rpm": 100})
    assert decide(guard, _chat(tight, roomy)) is None
    err = decide(guard, _chat(tight, roomy))
    assert isinstance(err, RateLimited) and "limit 1." in err.message


# -- tokens --------------------------------------------------------------------------------------


def test_tokens_are_charged_at_the_worst_case_and_corrected_when_done() -> None:
    guard = _guard(default_max_output_tokens=100)
    key = key_record("key_1", {"tpm": 1000})
    first = _chat(key, max_tokens=500)
    assert decide(guard, first) is None
    assert first.estimate is not None
    worst = first.estimate[0] + 500
    assert _headers(first) == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": str(1000 - worst),
        "x-ratelimit-reset-tokens": fmt_reset(worst * 0.06),
    }
    # Without the correction a second worst case this large would not fit.
    big = _chat(key, max_tokens=1000 - worst + 50)
    assert isinstance(decide(guard, big), RateLimited)
    first.usage.prompt_tokens, first.usage.completion_tokens = 10, 20
    run_complete(guard, first)  # the request used 30 tokens, not its worst case
    again = _chat(key, max_tokens=1000 - worst + 50)
    assert decide(guard, again) is None
    assert again.estimate is not None
    left = 1000 - 30 - (again.estimate[0] + 1000 - worst + 50)
    assert _headers(again)["x-ratelimit-remaining-tokens"] == str(left)


def test_a_token_limited_request_is_sent_with_its_output_capped_at_the_charge() -> None:
    guard = _guard(default_max_output_tokens=300)
    key = key_record("key_1", {"tpm": 100_000})
    for body in ({}, {"stream": True}, {"n": 2, "max_tokens": 50, "max_completion_tokens": 90}):
        ctx = _chat(key, **body)
        assert decide(guard, ctx) is None
        sent = orjson.loads(ctx.upstream_body())
        assert sent["max_completion_tokens"] == (90 if "n" in body else 300), body
        assert ctx.estimate is not None and ctx.estimate[1:3] == ((180, True) if "n" in body else (300, True))
    # a key with request rates only is left as it is (no estimate, no rewrite)
    plain = _chat(key_record("key_2", {"rpm": 10}))
    body = plain.body
    assert decide(guard, plain) is None and plain.body is body and plain.estimate is None
    # a file input cannot be bounded: refused
    part = {"type": "input_file", "file_id": "file-1"}
    refused = decide(guard, _chat(key, messages=[{"role": "user", "content": [part]}]))
    assert refused is not None and refused.code == "file_input_not_metered"


def test_a_request_whose_worst_case_can_never_fit_is_told_a_full_period() -> None:
    guard = _guard()
    key = key_record("key_1", {"tpm": 300, "rpm": 10})
    err = decide(guard, _chat(key, max_tokens=1000))
    assert isinstance(err, RateLimited) and err.retry_after == 60.0
    assert err.message == "Rate limit reached for tokens per minute: limit 300. Please try again in 60s."
    headers = dict(err.headers)
    assert headers["x-ratelimit-limit-tokens"] == "300" and headers["x-ratelimit-remaining-tokens"] == "300"
    assert headers["x-ratelimit-remaining-requests"] == "10"  # the refused request charged nothing


def test_an_estimate_made_earlier_is_reused() -> None:
    guard = _guard()
    key = key_record("key_1", {"tpm": 1000})
    ctx = _chat(key)
    ctx.estimate = (100, 200, True, "max_tokens", 1)  # made by an earlier limit guard
    assert decide(guard, ctx) is None
    assert _headers(ctx)["x-ratelimit-remaining-tokens"] == "700"


# -- concurrency ---------------------------------------------------------------------------------


def test_requests_in_flight_are_capped_until_they_complete() -> None:
    counters = MemoryCounters()
    guard = _guard(counters)
    key = key_record("key_1", {"max_concurrent": 1})
    first, second = _chat(key), _chat(key)
    assert decide(guard, first) is None and counters.in_flight("k:key_1:conc") == 1
    assert first.limit_headers is None  # a gate alone has no x-ratelimit-* headers
    err = decide(guard, second)
    assert isinstance(err, RateLimited) and err.code == "concurrency_limit_exceeded"
    assert err.message.startswith("Too many requests in flight")
    run_complete(guard, second)  # the refused request entered no gate: nothing to leave
    assert counters.in_flight("k:key_1:conc") == 1
    run_complete(guard, first)
    assert counters.in_flight("k:key_1:conc") == 0
    run_complete(guard, first)  # complete runs once per request; a second call changes nothing
    assert counters.in_flight("k:key_1:conc") == 0
    assert decide(guard, _chat(key)) is None


# -- x-ratelimit-* headers -----------------------------------------------------------------------


def test_headers_name_the_tightest_limit_of_each_kind() -> None:
    rates = [
        Rate("k:rps", 5, 1.0),  # 0.2 s per request
        Rate("k:rpm", 100, 60.0),  # 0.6 s per request
        Rate("k:tpm", 1000, 60.0, "tokens"),  # 0.06 s per token
    ]
    plan = Plan(rates[:2], rates[2:], [])
    now = 1000.0
    # Seconds until each bucket is full again, and the remaining counts they mean.
    cases = [
        ([0.2, 0.6, 0.06], [4, 99, 999]),
        ([0.2, 0.6, 0.06], [4, 99, 999]),  # the same values again
        ([0.9996, 58.2, 59.5], [0, 3, 8]),  # 1000ms; 1m0s
        ([0.2, 58.2, 0.06], [4, 3, 999]),  # the per-minute limit is the tighter one now
        ([0.0, 7.2, 3725.0], [5, 88, 0]),  # far past a full bucket: 0 remaining, never negative
    ]
    for ahead, remaining in cases:
        out = plan.headers([now + a for a in ahead], now, [("x-other", "1")])
        best = 0 if remaining[0] <= remaining[1] else 1
        assert out == [
            ("x-other", "1"),
            ("x-ratelimit-limit-requests", str(rates[best].limit)),
            ("x-ratelimit-remaining-requests", str(remaining[best])),
            ("x-ratelimit-reset-requests", fmt_reset(ahead[best])),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", str(remaining[2])),
            ("x-ratelimit-reset-tokens", fmt_reset(ahead[2])),
        ]
    assert fmt_reset(0.9996) == "1000ms" and fmt_reset(59.5) == "1m0s" and fmt_reset(-0.1) == "0ms"
    assert fmt_reset(0.0004) == "0ms" and fmt_reset(0.2) == "200ms" and fmt_reset(3725.0) == "1h2m5s"
    assert fmt_reset(1.0) == "1s" and fmt_reset(61.0) == "1m1s" and fmt_reset(0.0) == "0ms"


def test_keygate_rate_limit_headers_replace_the_upstreams_by_name() -> None:
    upstream = [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining-requests", "99"),
        ("X-RateLimit-Remaining-Tokens", "5"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("set-cookie", "a=b"),
    ]
    mine = compile_plan(key_record("k", {"rpm": 5}), None, {}).replaces  # requests only
    assert filter_response(upstream, "sk-upstream", mine) == [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining-tokens", "5"),
        ("x-ratelimit-limit-tokens", "30000000"),
    ]
    assert ("x-ratelimit-remaining-requests", "99") in filter_response(upstream, "sk-upstream")


# -- the awaiting guard --------------------------------------------------------------------------


def test_the_factories_pick_the_plain_guard_for_counters_that_never_wait() -> None:
    limits = parse_limits({})
    book = SpendBook(MemoryCounters(), None, 60.0)
    assert isinstance(rate_limit(MemoryCounters(), limits), RateLimit)
    assert isinstance(budget_guard(MemoryCounters(), limits, book), BudgetGuard)
    assert not isinstance(AwaitingCounters(), SyncCounters)
    assert type(rate_limit(AwaitingCounters(), limits)) is AsyncRateLimit  # type: ignore[arg-type]
    assert isinstance(budget_guard(AwaitingCounters(), limits, book), AsyncBudgetGuard)  # type: ignore[arg-type]


def test_the_awaiting_guard_refuses_and_frees_as_the_plain_one() -> None:
    for counters in (MemoryCounters(), AwaitingCounters()):
        guard = _guard(counters)
        free = _chat(key_record("free"))
        assert decide(guard, free) is None and free.limit_headers is None
        key = key_record("key_1", {"rpm": 2, "max_concurrent": 1, "tpm": 100_000})
        first = _chat(key)
        assert decide(guard, first) is None
        busy = decide(guard, _chat(key))
        assert isinstance(busy, RateLimited) and busy.code == "concurrency_limit_exceeded"
        first.usage.prompt_tokens = 5
        run_complete(guard, first)
        second = _chat(key)
        assert decide(guard, second) is None
        assert _headers(second)["x-ratelimit-remaining-requests"] == "0"
        run_complete(guard, second)
        over = decide(guard, _chat(key))
        assert isinstance(over, RateLimited)
        assert over.message == "Rate limit reached for requests per minute: limit 2. Please try again in 30s."


POLICY = {
    "rpm": 4,
    "tpm": 20_000,
    "max_concurrent": 2,
    "budget_usd": {"amount": 0.003, "period": "month"},  # about one worst case of gpt-4o-mini
}


def _limited(key: KeyRecord, max_tokens: int | None) -> Context:
    body: dict[str, Any] = dict(CHAT)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return context(json=body, key=key)


async def _run(guards: list[Guard], key: KeyRecord) -> list[tuple[object, ...]]:
    """A fixed sequence of requests; what each got: refusal code, remaining counts, max tokens sent."""
    seen: list[tuple[object, ...]] = []
    open_: list[Context] = []
    # (max tokens, kept in flight): two in flight fill the concurrency cap; 5000 tokens do not fit
    # the budget next to nothing held and are clamped; the next worst case does not fit at all;
    # the fifth request charged to the rate (refused ones by the budget count too) is over 4/min.
    for max_tokens, keep in [
        (None, True),
        (100, True),
        (50, False),
        (5000, True),
        (None, False),
        (50, False),
    ]:
        ctx = _limited(key, max_tokens)
        err = None
        for guard in guards:
            outcome = guard.request(ctx)
            err = await outcome if asyncio.iscoroutine(outcome) else outcome
            if err is not None:
                break
        extra = ctx.limit_headers
        remaining = sorted(h for h in extra[1] if "remaining" in h[0]) if extra else []
        sent_body = orjson.loads(ctx.upstream_body())
        sent = sent_body.get("max_completion_tokens", sent_body.get("max_tokens"))
        seen.append((err.code if err is not None else None, tuple(remaining), sent))
        ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 30, 40
        open_.append(ctx)
        if not keep or err is not None:
            for done in open_:
                for guard in reversed(guards):
                    guard.complete(done)
            open_.clear()
    return seen


def test_awaiting_guards_decide_as_the_plain_ones() -> None:
    limits = parse_limits({"default_max_output_tokens": 4096})
    key = KeyRecord("key_1", "k", "h", "hint", 0.0, policy=POLICY)

    def guards(counters: Any) -> list[Guard]:
        book = SpendBook(counters, None, 60.0)
        return [rate_limit(counters, limits), budget_guard(counters, limits, book)]

    plain, awaiting = guards(MemoryCounters()), guards(AwaitingCounters())
    assert isinstance(plain[0], RateLimit) and isinstance(plain[1], BudgetGuard)
    assert isinstance(awaiting[0], AsyncRateLimit) and isinstance(awaiting[1], AsyncBudgetGuard)

    expected = asyncio.run(_run(plain, key))
    assert asyncio.run(_run(awaiting, key)) == expected
    codes = [code for code, _, _ in expected]
    assert codes == [
        None,
        None,
        "concurrency_limit_exceeded",
        None,
        "insufficient_quota",
        "rate_limit_exceeded",
    ]
    assert expected[0][2] == 4096  # a non-streamed request without max tokens is capped at its hold
    assert expected[1][2] == 100
    clamped = expected[3][2]
    assert isinstance(clamped, int) and 4000 < clamped < 5000  # what the budget had left
    worst = (len(_limited(key, None).body) + 3) // 4 + 4096  # estimated prompt plus the default output
    assert expected[0][1] == (
        ("x-ratelimit-remaining-requests", "3"),
        ("x-ratelimit-remaining-tokens", str(20_000 - worst)),
    )


# -- through a real gateway ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("limits"), upstream.url) as g:
        yield g


def test_exactly_ten_of_a_hundred_simultaneous(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("rpm10", "--rpm", "10")["key"]
    responses = post_many(gw.url, key, 100, CHAT)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 90
    assert len(mock.requests) == 10  # the refused 90 never reached the upstream
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "10"
    assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 10
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limit_exceeded"


def test_sdk_sees_openai_rate_limit_error(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("rpm1", "--rpm", "1")["key"]
    client = OpenAI(base_url=gw.url, api_key=key, max_retries=0)
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"]
    assert info.value.code == "rate_limit_exceeded"
    assert len(mock.requests) == 1


def test_team_limit_is_shared_by_its_keys(gw: Gateway, mock: MockUpstream) -> None:
    gw.cli("teams", "create", "squad", "--rpm", "2")
    a = gw.create_key("a", "--team", "squad")["key"]
    b = gw.create_key("b", "--team", "squad")["key"]
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        codes = [
            http.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {k}"}).status_code
            for k in (a, b, a, b)
        ]
    assert codes == [200, 200, 429, 429]
    assert len(mock.requests) == 2


def test_tokens_per_minute_counts_the_worst_case(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("tpm", "--tpm", "300")["key"]
    with httpx.Client(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
        big = http.post("/chat/completions", json={**CHAT, "max_tokens": 1000})
        assert big.status_code == 429  # can never fit: 1000 output tokens > 300 per minute
        assert big.headers["x-ratelimit-limit-tokens"] == "300"
        ok = http.post("/chat/completions", json={**CHAT, "max_tokens": 50})
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-tokens"] == "300"
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 300
    assert len(mock.requests) == 1


def test_a_stream_counts_as_in_flight_until_it_ends(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("conc1", "--max-concurrent", "1")["key"]
    headers = {"authorization": f"Bearer {key}"}
    mock.fail_next("slow", delay=0.5)  # half a second before each event: the stream stays open
    with httpx.Client(base_url=gw.url, timeout=30, headers=headers) as http:
        with httpx.stream(
            "POST", f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=headers
        ) as stream:
            assert stream.status_code == 200
            chunks = stream.iter_raw()  # keep the generator: dropping it closes the stream
            assert next(chunks)  # the stream has started and is in flight
            second = http.post("/chat/completions", json=CHAT)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert len(mock.requests) == 1
        # The client closed its stream: the slot frees as soon as keygate notices.
        deadline = time.monotonic() + 10
        while (third := http.post("/chat/completions", json=CHAT)).status_code == 429:
            assert time.monotonic() < deadline, "the stream's slot was never released"
            time.sleep(0.05)
        assert third.status_code == 200


def test_upstream_429_reaches_the_client_and_is_counted(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("up429", "--rpm", "5")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    mock.fail_next("429", retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "7"
    # keygate's own counts replace the upstream's in the x-ratelimit headers
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "5"
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "4"
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    assert entry["status"] == 429


def test_tokens_per_minute_keep_the_worst_case_of_an_answer_without_usage(
    gw: Gateway, mock: MockUpstream
) -> None:
    key = gw.create_key("tpm-nousage", "--tpm", "10000")["key"]
    with httpx.Client(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
        mock.reply_next(200, b"upstream said something that is not JSON")
        first = http.post("/chat/completions", json={**CHAT, "max_tokens": 5000})
        assert first.status_code == 200
        assert mock.requests[-1].json()["max_tokens"] == 5000
        # The first request reported no usage: it keeps its worst case (not refunded to 0), so a
        # second one as large does not fit in the minute.
        second = http.post("/chat/completions", json={**CHAT, "max_tokens": 5000})
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    entry = gw.wait_entry(lambda e: e["status"] == 200 and e["completion_tokens"] == 5000)
    assert entry["estimated"] is True
    # a stream on a token-limited key is sent with its output capped at what was charged
    key2 = gw.create_key("tpm-stream", "--tpm", "100000")["key"]
    client = OpenAI(base_url=gw.url, api_key=key2, max_retries=0)
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        pass
    assert mock.requests[-1].json()["max_completion_tokens"] == 4096
