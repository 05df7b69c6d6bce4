"""Per-key and per-team rate limits (requests per s/min/h/day, tokens per minute) and concurrency.

Limits come from the key's policy, its team's policy, and ``limits.defaults`` for anything the key
does not set itself; key and team limits are separate counters, so the stricter one decides.
Requests cost 1; tokens cost the request's worst case up front (like OpenAI) and are corrected to
the real usage when the request completes. Every response carries OpenAI's ``x-ratelimit-*``
headers for the tightest limits; a refusal is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..chain import Context, Guard
from ..counters import Counters, Decision, Rate, SyncCounters
from ..errors import KeygateError, RateLimited
from ..limitconf import RATE_PERIODS, LimitSettings
from ..types import KeyRecord, Team
from ._estimate import add_headers, estimate


class Plan:
    """A key's compiled limits, with everything a request needs precomputed once per key record."""

    __slots__ = ("gate_names", "gates", "header_groups", "rates", "requests", "tokens", "unit_costs")

    def __init__(self, requests: list[Rate], tokens: list[Rate], gates: list[tuple[str, int]]) -> None:
        self.requests = requests
        self.tokens = tokens
        self.gates = gates
        self.gate_names = [name for name, _ in gates]
        self.rates = requests + tokens
        self.unit_costs = [1.0] * len(requests)  # the requests' costs; tokens' are per request
        # Per kind: (kind, indices into rates) for the x-ratelimit-* headers.
        self.header_groups: list[tuple[str, list[int]]] = []
        for kind in ("requests", "tokens"):
            indices = [i for i, r in enumerate(self.rates) if r.kind == kind]
            if indices:
                self.header_groups.append((kind, indices))

    @property
    def empty(self) -> bool:
        return not (self.requests or self.tokens or self.gates)


def compile_plan(key: KeyRecord, team: Team | None, defaults: Mapping[str, Any]) -> Plan:
    requests: list[Rate] = []
    tokens: list[Rate] = []
    gates: list[tuple[str, int]] = []
    scopes: list[tuple[str, Mapping[str, Any]]] = [(f"k:{key.id}", {**defaults, **key.policy})]
    if team is not None:
        scopes.append((f"t:{team.id}", team.policy))
    for prefix, policy in scopes:
        for name, (period, kind) in RATE_PERIODS.items():
            limit = policy.get(name)
            if isinstance(limit, int) and limit > 0:
                rate = Rate(f"{prefix}:{name}", limit, period, kind)
                (tokens if kind == "tokens" else requests).append(rate)
        cap = policy.get("max_concurrent")
        if isinstance(cap, int) and cap > 0:
            gates.append((f"{prefix}:conc", cap))
    return Plan(requests, tokens, gates)


def fmt_reset(seconds: float) -> str:
    """OpenAI's duration format: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


def limit_headers(plan_rates: list[Rate], remaining: list[int], reset: list[float]) -> list[tuple[str, str]]:
    """``x-ratelimit-*`` for the tightest requests limit and the tightest tokens limit."""
    out: list[tuple[str, str]] = []
    for kind in ("requests", "tokens"):
        best = -1
        for i, rate in enumerate(plan_rates):
            if rate.kind == kind and (best < 0 or remaining[i] < remaining[best]):
                best = i
        if best >= 0:
            out.append((f"x-ratelimit-limit-{kind}", str(plan_rates[best].limit)))
            out.append((f"x-ratelimit-remaining-{kind}", str(remaining[best])))
            out.append((f"x-ratelimit-reset-{kind}", fmt_reset(reset[best])))
    return out


_UNITS = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
_GATES_FULL = RateLimited(
    "Too many requests in flight for this key or team; wait for one to finish.",
    code="concurrency_limit_exceeded",
)


def plan_headers(plan: Plan, remaining: list[int], reset: list[float]) -> list[tuple[str, str]]:
    """:func:`limit_headers` with the per-kind grouping precomputed in the plan."""
    out: list[tuple[str, str]] = []
    rates = plan.rates
    for kind, indices in plan.header_groups:
        best = indices[0]
        for i in indices:
            if remaining[i] < remaining[best]:
                best = i
        out.append((f"x-ratelimit-limit-{kind}", str(rates[best].limit)))
        out.append((f"x-ratelimit-remaining-{kind}", str(remaining[best])))
        out.append((f"x-ratelimit-reset-{kind}", fmt_reset(reset[best])))
    return out


class RateLimitBase(Guard):
    """Shared by :class:`RateLimit` (plain, in-process counters) and :class:`AsyncRateLimit`."""

    name = "ratelimit"

    def __init__(self, counters: Counters, limits: LimitSettings) -> None:
        self._counters = counters
        self._defaults = limits.defaults
        self._default_output = limits.default_max_output_tokens
        self._plans: dict[str, tuple[KeyRecord, Team | None, Plan]] = {}

    def plan(self, key: KeyRecord, team: Team | None) -> Plan:
        cached = self._plans.get(key.id)
        if cached is not None and cached[0] is key and cached[1] is team:
            return cached[2]
        plan = compile_plan(key, team, self._defaults)
        self._plans[key.id] = (key, team, plan)
        return plan

    def _costs(self, ctx: Context, plan: Plan) -> tuple[list[float], int]:
        if not plan.tokens:
            return plan.unit_costs, 0
        cost = estimate(ctx, self._default_output).total
        return plan.unit_costs + [float(cost)] * len(plan.tokens), cost

    def _decided(self, ctx: Context, plan: Plan, cost: int, decision: Decision) -> KeygateError | None:
        headers = plan_headers(plan, decision.remaining, decision.reset)
        if not decision.allowed:
            if "gates" in ctx.extras:
                self._counters.leave(ctx.extras.pop("gates"))
            denied = decision.denied
            assert denied is not None
            what = "tokens" if denied.kind == "tokens" else "requests"
            return RateLimited(
                f"Rate limit reached for {what} per {_UNITS[denied.period]}: limit {denied.limit}. "
                f"Please try again in {decision.retry_after:.3g}s.",
                retry_after=decision.retry_after,
                headers=headers,
            )
        if plan.tokens:
            ctx.extras["tpm"] = (plan.tokens, cost)
        add_headers(ctx, headers)
        return None

    def complete(self, ctx: Context) -> None:
        extras = ctx.extras
        gates = extras.get("gates")
        if gates is not None:
            self._counters.leave(gates)
        tpm = extras.get("tpm")
        if tpm is not None:
            rates, charged = tpm
            delta = ctx.usage.total_tokens - charged
            if delta:
                now = time.monotonic()
                for rate in rates:
                    self._counters.adjust(rate, delta, now)


class RateLimit(RateLimitBase):
    """Rate limits on counters that decide without waiting: a plain request phase, no coroutine."""

    def __init__(self, counters: Counters, limits: LimitSettings) -> None:
        super().__init__(counters, limits)
        assert isinstance(counters, SyncCounters)
        self._now: SyncCounters = counters

    def request(self, ctx: Context) -> KeygateError | None:
        assert ctx.key is not None
        plan = self.plan(ctx.key, ctx.team)
        if plan.gates:
            if self._now.enter_now(plan.gates) is not None:
                return _GATES_FULL
            ctx.extras["gates"] = plan.gate_names
        if not plan.rates:
            return None
        costs, cost = self._costs(ctx, plan)
        return self._decided(ctx, plan, cost, self._now.take_now(plan.rates, costs, time.monotonic()))


class AsyncRateLimit(RateLimitBase):
    """Rate limits on counters that may wait for a round trip (a shared, networked store)."""

    async def request(self, ctx: Context) -> KeygateError | None:
        assert ctx.key is not None
        plan = self.plan(ctx.key, ctx.team)
        if plan.gates:
            if await self._counters.enter(plan.gates) is not None:
                return _GATES_FULL
            ctx.extras["gates"] = plan.gate_names
        if not plan.rates:
            return None
        costs, cost = self._costs(ctx, plan)
        return self._decided(ctx, plan, cost, await self._counters.take(plan.rates, costs, time.monotonic()))


def rate_limit(counters: Counters, limits: LimitSettings) -> RateLimitBase:
    """The plain guard when the counters offer :class:`SyncCounters`, else the awaiting one."""
    if isinstance(counters, SyncCounters):
        return RateLimit(counters, limits)
    return AsyncRateLimit(counters, limits)
