"""The awaiting limit guards (for counters that need a round trip, like a shared store) decide
exactly as the plain ones do on the in-process counters: same refusals, same clamping, same
remaining counts, same settled spend."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from keygate import routes
from keygate.chain import Guard
from keygate.context import Context
from keygate.counters import MemoryCounters, Rate, Refused, SyncCounters, Taken
from keygate.guards.budget import AsyncBudgetGuard, BudgetGuard, budget_guard
from keygate.guards.ratelimit import AsyncRateLimit, RateLimit, rate_limit
from keygate.limitconf import parse_limits
from keygate.spend import SpendBook
from keygate.types import KeyRecord


class AwaitingCounters:
    """In-process counters behind only the awaiting deciding methods, as a networked store offers."""

    def __init__(self) -> None:
        self.inner = MemoryCounters()

    async def take(
        self, rates: Sequence[Rate], costs: Sequence[float], now: float, gates: Sequence[tuple[str, int]] = ()
    ) -> Taken | Refused:
        await asyncio.sleep(0)  # a real round trip lets other requests run here
        return self.inner.take_now(rates, costs, now, gates)

    async def reserve(
        self, names: Sequence[str], limits: Sequence[float], amounts: Sequence[float]
    ) -> int | None:
        await asyncio.sleep(0)
        return self.inner.reserve_now(names, limits, amounts)

    async def available(self, names: Sequence[str]) -> list[tuple[float, float]]:
        await asyncio.sleep(0)
        return self.inner.available_now(names)

    def finish(self, gates: Sequence[str], rates: Sequence[Rate], delta: float, now: float) -> None:
        self.inner.finish(gates, rates, delta, now)

    def adjust(self, rate: Rate, delta: float, now: float) -> None:
        self.inner.adjust(rate, delta, now)

    def leave(self, names: Sequence[str]) -> None:
        self.inner.leave(names)

    def settle(self, name: str, held: float, spent: float) -> tuple[float, float]:
        return self.inner.settle(name, held, spent)

    def load(self, spent: Mapping[str, float]) -> None:
        self.inner.load(spent)

    def snapshot(self, names: Sequence[str]) -> dict[str, tuple[float, float]]:
        return self.inner.snapshot(names)


POLICY = {
    "rpm": 4,
    "tpm": 20_000,
    "max_concurrent": 2,
    "budget_usd": {"amount": 0.003, "period": "month"},  # about one worst case of gpt-4o-mini
}


def _ctx(key: KeyRecord, max_tokens: int | None) -> Context:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    ctx = Context("r", "POST", "/v1/chat/completions", "", {}, "127.0.0.1")
    ctx.route = routes.match("POST", "/v1/chat/completions")
    ctx.body = orjson.dumps(body)
    ctx.json = body
    ctx.model = "gpt-4o-mini"
    ctx.key = key
    return ctx


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
        ctx = _ctx(key, max_tokens)
        err = None
        for guard in guards:
            outcome = guard.request(ctx)
            err = await outcome if asyncio.iscoroutine(outcome) else outcome
            if err is not None:
                break
        extra = ctx.limit_headers
        remaining = sorted(h for h in extra[1] if "remaining" in h[0]) if extra else []
        sent_body = orjson.loads(ctx.body)
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
    assert not isinstance(AwaitingCounters(), SyncCounters)

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
    worst = (len(_ctx(key, None).body) + 3) // 4 + 4096  # estimated prompt plus the default output
    assert expected[0][1] == (
        ("x-ratelimit-remaining-requests", "3"),
        ("x-ratelimit-remaining-tokens", str(20_000 - worst)),
    )
