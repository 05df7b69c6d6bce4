"""Per-key and per-team rate limits (requests per s/min/h/day, tokens per minute) and concurrency.

Limits come from the key's policy, its team's policy, and ``limits.defaults`` for anything the key
does not set itself; key and team limits are separate counters, so the stricter one decides.
Requests cost 1; tokens cost the request's worst case up front (like OpenAI; see
``_estimate.py``), the request is sent with its output capped at that worst case, and the charge is
corrected to the real usage when the request completes (to the worst case, marked as an estimate,
when no usage arrived). Every response carries OpenAI's ``x-ratelimit-*``
headers for the tightest limits; a refusal is a 429 with ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import ceil
from time import monotonic
from typing import Any

from ..chain import Guard
from ..context import Context, Estimate
from ..counters import Counters, Rate, Refused, SyncCounters
from ..errors import KeygateError, RateLimited
from ..limitconf import RATE_PERIODS, LimitSettings
from ..types import KeyRecord, Team
from ._estimate import cap_output, charge_unreported, estimate


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
        "request_costs",
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
        self._costs = self.request_costs = [1.0] * len(requests)
        # x-ratelimit-* headers: each rate's limit header, made once.
        self.limit_headers = [(f"x-ratelimit-limit-{r.kind}", str(r.limit)) for r in self.rates]
        # Per kind with a limit: its first rate's index, the indices of its other rates (usually
        # none) and the kind's header names.
        self.kinds: list[tuple[int, tuple[int, ...], KindHeaders]] = []
        for kind in ("requests", "tokens"):
            indices = [i for i, r in enumerate(self.rates) if r.kind == kind]
            if indices:
                self.kinds.append((indices[0], tuple(indices[1:]), HEADERS[kind]))
        # The upstream headers that keygate's own replace (see app.Gateway._reply_headers).
        self.replaces = frozenset(
            f"x-ratelimit-{part}-{kind}"
            for _, _, made in self.kinds
            for kind in (made.kind,)
            for part in ("limit", "remaining", "reset")
        )

    def costs(self, tokens: int) -> list[float]:
        """The cost of each rate for a request whose worst case is ``tokens`` tokens."""
        if tokens != self._costs_for and self.tokens:
            self._costs = self._costs[: len(self.requests)] + [float(tokens)] * len(self.tokens)
            self._costs_for = tokens
        return self._costs

    def headers(self, afters: list[float], now: float, out: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Add to ``out`` the ``x-ratelimit-*`` headers of the tightest requests limit and of the
        tightest tokens limit, given each rate's bucket time ``afters[i]`` (seconds until it is full
        again: ``afters[i] - now``); returns ``out``."""
        rates = self.rates
        for best, others, made in self.kinds:
            rate = rates[best]
            seconds = afters[best] - now
            left = rate.limit - ceil(seconds / rate.interval - 1e-9)
            for i in others:
                rate = rates[i]
                ahead = afters[i] - now
                units = rate.limit - ceil(ahead / rate.interval - 1e-9)
                if units < left:
                    best, left, seconds = i, units, ahead
            # (Float constants: on CPython 3.11 a float compared with an int takes a slow path.)
            if 0.0 <= seconds < 1.0:
                reset_header = made.reset_ms[int(seconds * 1000.0 + 0.5)]  # what fmt_reset shows
            else:
                reset_header = (made.reset_name, fmt_reset(seconds))
            out += (
                self.limit_headers[best],
                (made.remaining_name, str(left) if left > 0 else "0"),
                reset_header,
            )
        return out


_MS = [f"{ms}ms" for ms in range(1001)]  # fmt_reset below a second (0.9996 s rounds to 1000ms)


class KindHeaders:
    """Per kind, the ``x-ratelimit-*`` header names and the reset headers below a second, made once."""

    __slots__ = ("kind", "remaining_name", "reset_ms", "reset_name")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.remaining_name = f"x-ratelimit-remaining-{kind}"
        self.reset_name = f"x-ratelimit-reset-{kind}"
        self.reset_ms = [(self.reset_name, text) for text in _MS]  # 0ms to 1000ms


HEADERS = {kind: KindHeaders(kind) for kind in ("requests", "tokens")}


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
        return _MS[int(seconds * 1000.0 + 0.5)] if seconds > 0.0 else "0ms"
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


_UNITS = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86400.0: "day"}
_GATES_FULL = RateLimited(
    "Too many requests in flight for this key or team; wait for one to finish.",
    code="concurrency_limit_exceeded",
)


class RateLimitBase(Guard):
    """Shared by :class:`RateLimit` (plain, in-process counters) and :class:`AsyncRateLimit`."""

    name = "ratelimit"
    needs = frozenset({"key", "team", "body", "json"})
    provides = frozenset({"estimate", "limit_headers"})

    def __init__(self, counters: Counters, limits: LimitSettings) -> None:
        self._counters = counters
        self._defaults = limits.defaults
        self._limits = limits
        self._plans: dict[str, tuple[KeyRecord, Team | None, Plan]] = {}

    def plan(self, key: KeyRecord, team: Team | None) -> Plan:
        cached = self._plans.get(key.id)
        if cached is not None and cached[0] is key and cached[1] is team:
            return cached[2]
        plan = compile_plan(key, team, self._defaults)
        self._plans[key.id] = (key, team, plan)
        return plan

    def _refusal(self, plan: Plan, refused: Refused) -> KeygateError:
        if refused.gate is not None:
            return _GATES_FULL
        denied = refused.denied
        assert denied is not None
        what = "tokens" if denied.kind == "tokens" else "requests"
        return RateLimited(
            f"Rate limit reached for {what} per {_UNITS[denied.period]}: limit {denied.limit}. "
            f"Please try again in {refused.retry_after:.3g}s.",
            retry_after=refused.retry_after,
            headers=plan.headers(refused.reset, 0.0, []),  # reset: seconds from now, so now is 0
        )

    def complete(self, ctx: Context) -> None:
        taken: tuple[Plan, int] | None = ctx.extras.pop("ratelimit", None)
        if taken is None:
            return
        plan, charged = taken
        delta = 0
        if plan.tokens:
            usage = ctx.usage
            if not usage.reported:
                est = ctx.estimate  # (set: the request phase charged it; the budget may have clamped it)
                if est is not None:
                    charge_unreported(ctx, est[0], est[1])
            delta = usage.prompt_tokens + usage.completion_tokens - charged
        self._counters.finish(plan.gate_names, plan.tokens, delta, monotonic() if delta else 0.0)

    def _worst_case(self, ctx: Context) -> int | KeygateError:
        """The request's worst case in tokens, charged to the token rates up front."""
        est = ctx.estimate or estimate(ctx, self._limits)
        if isinstance(est, KeygateError):
            return est
        return est[0] + est[1]


class RateLimit(RateLimitBase):
    """Rate limits on counters that decide without waiting: a plain request phase, no coroutine."""

    def __init__(self, counters: Counters, limits: LimitSettings) -> None:
        super().__init__(counters, limits)
        assert isinstance(counters, SyncCounters)
        self._now: SyncCounters = counters

    def request(self, ctx: Context) -> KeygateError | None:
        key = ctx.key
        assert key is not None
        cached = self._plans.get(key.id)  # (self.plan(), inlined: this runs for every request)
        if cached is None or cached[0] is not key or cached[1] is not ctx.team:
            plan = self.plan(key, ctx.team)
        else:
            plan = cached[2]
        if plan.empty:
            return None
        est: Estimate | None = None
        if plan.tokens:
            found = ctx.estimate or estimate(ctx, self._limits)
            if isinstance(found, KeygateError):
                return found
            est = found
            cost = est[0] + est[1]
            costs = plan._costs if cost == plan._costs_for else plan.costs(cost)
        else:
            cost, costs = 0, plan.request_costs
        now = monotonic()
        taken = self._now.take_now(plan.rates, costs, now, plan.gates)
        if taken.__class__ is Refused:
            return self._refusal(plan, taken)
        # (What AsyncRateLimit does after its take, inlined here like the plan lookup above.)
        if est is not None and not est[2] and est[1]:
            cap_output(ctx, est)  # the upstream stops at the output charged
        ctx.extras["ratelimit"] = (plan, cost)  # for complete(): gates to leave, tokens to correct
        if plan.kinds:
            # Headers for the client response, whatever it turns out to be (app.py adds them).
            ctx.limit_headers = (plan.replaces, plan.headers(taken, now, []))  # type: ignore[arg-type]
        return None


class AsyncRateLimit(RateLimitBase):
    """Rate limits on counters that may wait for a round trip (a shared, networked store)."""

    async def request(self, ctx: Context) -> KeygateError | None:
        assert ctx.key is not None
        plan = self.plan(ctx.key, ctx.team)
        if plan.empty:
            return None
        cost = self._worst_case(ctx) if plan.tokens else 0
        if not isinstance(cost, int):
            return cost
        now = monotonic()
        taken = await self._counters.take(plan.rates, plan.costs(cost), now, plan.gates)
        if isinstance(taken, Refused):
            return self._refusal(plan, taken)
        if plan.tokens and ctx.estimate is not None:
            cap_output(ctx, ctx.estimate)  # the upstream stops at the output charged
        ctx.extras["ratelimit"] = (plan, cost)
        if plan.kinds:
            ctx.limit_headers = (plan.replaces, plan.headers(taken, now, []))
        return None


def rate_limit(counters: Counters, limits: LimitSettings) -> RateLimitBase:
    """The plain guard when the counters offer :class:`SyncCounters`, else the awaiting one."""
    if isinstance(counters, SyncCounters):
        return RateLimit(counters, limits)
    return AsyncRateLimit(counters, limits)
