"""Micro-benchmark: CPU per request of the rate-limit, budget and global guards (no network).

PYTHONPATH=src python scripts/bench_guards.py
"""

from __future__ import annotations

import asyncio
import time

import orjson

from keygate import routes
from keygate.chain import Chain, Context
from keygate.counters import MemoryCounters
from keygate.guards.budget import BudgetGuard
from keygate.guards.global_limits import GlobalLimit
from keygate.guards.ratelimit import RateLimit
from keygate.limitconf import parse_limits
from keygate.spend import SpendBook
from keygate.types import KeyRecord

N = 100_000
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]})


def make_ctx(key: KeyRecord) -> Context:
    ctx = Context("r", "POST", "/v1/chat/completions", "", {}, "127.0.0.1")
    ctx.route = routes.match("POST", "/v1/chat/completions")
    ctx.body = BODY
    ctx.json = orjson.loads(BODY)
    ctx.model = "gpt-4o-mini"
    ctx.key = key
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 9, 12
    return ctx


async def run(chain: Chain, key: KeyRecord) -> float:
    start = time.process_time()
    for _ in range(N):
        ctx = make_ctx(key)
        assert await chain.request(ctx) is None
        chain.complete(ctx)
    return (time.process_time() - start) / N * 1e6


async def main() -> None:
    limits = parse_limits({"global": {"rps": 10**9, "max_concurrent": 10**6}})
    counters = MemoryCounters()
    book = SpendBook(counters, None, 1.0)
    policy = {
        "rpm": 10**9,
        "rpd": 10**9,
        "tpm": 10**12,
        "max_concurrent": 10**6,
        "budget_usd": {"amount": 1e12, "period": "month"},
        "budget_tokens": {"amount": 10**15, "period": "day"},
    }
    limited = KeyRecord("key_1", "bench", "h", "hint", 0.0, policy=policy)
    plain = KeyRecord("key_2", "bench", "h", "hint", 0.0)
    typical_policy = {"rpm": 10**9, "budget_usd": {"amount": 1e12, "period": "month"}}
    typical = KeyRecord("key_3", "bench", "h", "hint", 0.0, policy=typical_policy)
    guards = Chain(
        [RateLimit(counters, limits), BudgetGuard(counters, limits, book), GlobalLimit(limits.global_)]
    )
    empty = Chain([])
    base = await run(empty, plain)
    off = await run(guards, plain)
    one = await run(guards, typical)
    on = await run(guards, limited)
    print(f"context + empty chain:                 {base:6.2f} us/request")
    print(f"guards, key without limits:            {off - base:6.2f} us/request")
    print(f"guards, rpm + a dollar budget:         {one - base:6.2f} us/request")
    print(f"guards, all limits + both budgets on:  {on - base:6.2f} us/request")


if __name__ == "__main__":
    asyncio.run(main())
