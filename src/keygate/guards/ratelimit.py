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
from time import monotonic
from typing import Any

from ..chain import Context, Guard
from ..counters import Counters, Decision, Rate, SyncCounters
from ..errors import KeygateError, RateLimited
from ..limitconf import RATE_PERIODS, LimitSettings
from ..types import KeyRecord, Team
from ._estimate import estimate


class Plan:
    """A key's compiled limits, with everything a request needs precomputed once per key record."""

    __slots__ = (
        "_costs",
        "_costs_for",
        "empty",
        "gate_names",
        "gates",
        "kinds",
        "limit_headers",
        "rates",
        "replaces",
        "requests",
        "tokens",
    )

    def __init__(self, requests: list[Rate], tokens: list[Rate], gates: list[tuple[str, int]]) -> None:
        self.requests = requests
        self.tokens = tokens
        self.gates = gates
        self.gate_names = [name for name, _ in gates]
        self.rates = requests + tokens
        self.empty = not (self.rates or gates)
        # The rates' costs, requests first (1 each), then tokens (the request's worst case, the same
        # for every token rate), for the last token cost asked for: reused while it repeats.
        self._costs_for = -1
        self._costs = [1.0] * len(requests)
        # x-ratelimit-* headers: each rate's limit header, made once; per kind that has a limit
        # (requests first), the indices of its rates and that kind's header cache.
        self.limit_headers = [(f"x-ratelimit-limit-{r.kind}", str(r.limit)) for r in self.rates]
        self.kinds: list[tuple[list[int], HeaderCache]] = []
        for kind in ("requests", "tokens"):
            indices = [i for i, r in enumerate(self.rates) if r.kind == kind]
            if indices:
                self.kinds.append((indices, HEADERS[kind]))
        # The upstream headers keygate's own replace (see app.with_extras).
        self.replaces = frozenset(
            f"x-ratelimit-{part}-{kind}"
            for _, made in self.kinds
            for kind in (made.kind,)
            for part in ("limit", "remaining", "reset")
        )

    def costs(self, tokens: int) -> list[float]:
        """The cost of each rate for a request whose worst case is ``tokens`` tokens."""
        if tokens != self._costs_for and self.tokens:
            self._costs = self._costs[: len(self.requests)] + [float(tokens)] * len(self.tokens)
            self._costs_for = tokens
        return self._costs

    def headers(
        self, remaining: list[int], reset: list[float], out: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Add to ``out`` the ``x-ratelimit-*`` headers of the tightest requests limit and of the
        tightest tokens limit, given each rate's remaining count and reset time; returns ``out``."""
        for indices, made in self.kinds:
            best = indices[0]
            if len(indices) > 1:
                for i in indices:
                    if remaining[i] < remaining[best]:
                        best = i
            left = remaining[best]
            left_header = made.remaining.get(left)
            if left_header is None:
                left_header = made.make_remaining(left)
            seconds = reset[best]
            if 0 <= seconds < 1:
                ms = round(seconds * 1000)  # what fmt_reset shows: {ms}ms
                reset_header = made.reset_ms.get(ms)
                if reset_header is None:
                    reset_header = made.make_reset_ms(ms)
            else:
                reset_header = (made.reset_name, fmt_reset(seconds))
            out += (self.limit_headers[best], left_header, reset_header)
        return out


class HeaderCache:
    """The ``x-ratelimit-remaining-*`` and ``-reset-*`` headers of one kind, made once per value.

    The same values come back request after request (a key well within its limits shows the same
    remaining count and reset time each time), so each header is made once and reused; shared by
    every key, and bounded.
    """

    __slots__ = ("kind", "remaining", "remaining_name", "reset_ms", "reset_name")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.remaining_name = f"x-ratelimit-remaining-{kind}"
        self.reset_name = f"x-ratelimit-reset-{kind}"
        self.remaining: dict[int, tuple[str, str]] = {}
        self.reset_ms: dict[int, tuple[str, str]] = {}  # at most 1001 (0ms to 1000ms)

    def make_remaining(self, left: int) -> tuple[str, str]:
        if len(self.remaining) >= 1024:
            self.remaining.clear()
        header = self.remaining[left] = (self.remaining_name, str(left))
        return header

    def make_reset_ms(self, ms: int) -> tuple[str, str]:
        header = self.reset_ms[ms] = (self.reset_name, _MS[ms])
        return header


HEADERS = {kind: HeaderCache(kind) for kind in ("requests", "tokens")}


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
        return _MS[max(0, round(seconds * 1000))]
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


_MS = [f"{ms}ms" for ms in range(1001)]  # fmt_reset below a second (0.9996 s rounds to 1000ms)
_UNITS = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
_GATES_FULL = RateLimited(
    "Too many requests in flight for this key or team; wait for one to finish.",
    code="concurrency_limit_exceeded",
)


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

    def _decided(self, ctx: Context, plan: Plan, cost: int, decision: Decision) -> KeygateError | None:
        if not decision.allowed:
            if decision.gate is not None:
                return _GATES_FULL
            denied = decision.denied
            assert denied is not None
            what = "tokens" if denied.kind == "tokens" else "requests"
            return RateLimited(
                f"Rate limit reached for {what} per {_UNITS[denied.period]}: limit {denied.limit}. "
                f"Please try again in {decision.retry_after:.3g}s.",
                retry_after=decision.retry_after,
                headers=plan.headers(decision.remaining, decision.reset, []),
            )
        extras = ctx.extras
        extras["ratelimit"] = (plan, cost)  # for complete(): gates to leave, tokens to correct
        if plan.kinds:
            # Headers for the client response, whatever it turns out to be (app.py adds them).
            extras["headers"] = (plan.replaces, plan.headers(decision.remaining, decision.reset, []))
        return None

    def complete(self, ctx: Context) -> None:
        taken: tuple[Plan, int] | None = ctx.extras.pop("ratelimit", None)
        if taken is None:
            return
        plan, charged = taken
        if plan.gate_names:
            self._counters.leave(plan.gate_names)
        if plan.tokens:
            usage = ctx.usage
            delta = usage.prompt_tokens + usage.completion_tokens - charged
            if delta:
                now = time.monotonic()
                for rate in plan.tokens:
                    self._counters.adjust(rate, delta, now)

    def _worst_case(self, ctx: Context) -> int:
        """The request's worst case in tokens, charged to the token rates up front."""
        est = estimate(ctx, self._default_output)
        return est.prompt + est.output


class RateLimit(RateLimitBase):
    """Rate limits on counters that decide without waiting: a plain request phase, no coroutine."""

    def __init__(self, counters: Counters, limits: LimitSettings) -> None:
        super().__init__(counters, limits)
        assert isinstance(counters, SyncCounters)
        self._now: SyncCounters = counters

    def request(self, ctx: Context) -> KeygateError | None:
        key, team = ctx.key, ctx.team
        assert key is not None
        cached = self._plans.get(key.id)  # (self.plan(), inlined: this runs for every request)
        if cached is not None and cached[0] is key and cached[1] is team:
            plan = cached[2]
        else:
            plan = self.plan(key, team)
        if plan.empty:
            return None
        cost = self._worst_case(ctx) if plan.tokens else 0
        decision = self._now.take_now(plan.rates, plan.costs(cost), monotonic(), plan.gates)
        return self._decided(ctx, plan, cost, decision)


class AsyncRateLimit(RateLimitBase):
    """Rate limits on counters that may wait for a round trip (a shared, networked store)."""

    async def request(self, ctx: Context) -> KeygateError | None:
        assert ctx.key is not None
        plan = self.plan(ctx.key, ctx.team)
        if plan.empty:
            return None
        cost = self._worst_case(ctx) if plan.tokens else 0
        decision = await self._counters.take(plan.rates, plan.costs(cost), time.monotonic(), plan.gates)
        return self._decided(ctx, plan, cost, decision)


def rate_limit(counters: Counters, limits: LimitSettings) -> RateLimitBase:
    """The plain guard when the counters offer :class:`SyncCounters`, else the awaiting one."""
    if isinstance(counters, SyncCounters):
        return RateLimit(counters, limits)
    return AsyncRateLimit(counters, limits)
