"""Rate limits, budgets and the global upstream caps on counters shared by several instances.

With shared counters (Redis: :class:`~keygate.counters.SharedCounters`) this one guard takes the
place of the rate-limit, budget and global-limit guards, so that a request costs one round trip to
admit and one to settle: its key, team and global gates and rates and its budget holds are decided
together, all or nothing (a request refused by its team's limit, or by its budget, is charged to
nothing), and given back together when it completes. What each limit means, the refusals and the
headers are the three guards' own (their methods are used here); only who calls the counters, and
how often, differs.

When the counters cannot decide (Redis unreachable), a request that needs them gets 503
``counters_unavailable`` (``on_counter_failure: closed``, the default), or is let through unlimited
with a warning (``open``, logged at most every 10 s). A request with no limit never asks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import monotonic

from ..chain import Guard
from ..context import Context
from ..counters import Admitted, Ask, BudgetShort, CountersUnavailable, Done, Rate, Refused, SharedCounters
from ..errors import KeygateError, ServiceUnavailable
from ..events import SecurityEvents
from ..limitconf import LimitSettings
from ..spend import SpendBook
from ._estimate import cap_output, charge_unreported, estimate
from .budget import BudgetGuardBase, Reservation
from .global_limits import _busy
from .ratelimit import Plan, RateLimitBase

log = logging.getLogger("keygate.limits")

UNAVAILABLE = ServiceUnavailable(
    "The gateway cannot reach its shared limit counters; please retry shortly.",
    code="counters_unavailable",
    headers=[("retry-after", "1")],
)
GLOBAL_RPS = "g:rps"
GLOBAL_GATE = "g:conc"


class SharedLimits(Guard):
    name = "limits"
    needs = RateLimitBase.needs | BudgetGuardBase.needs
    provides = frozenset({"estimate", "limit_headers"})

    def __init__(
        self,
        counters: SharedCounters,
        limits: LimitSettings,
        book: SpendBook,
        on_failure: str = "closed",
        events: SecurityEvents | None = None,
    ) -> None:
        self._counters = counters
        self._limits = limits
        self._rates = RateLimitBase(counters, limits)  # type: ignore[arg-type]
        self._budget = BudgetGuardBase(counters, limits, book, events)  # type: ignore[arg-type]
        self._open = on_failure == "open"
        g = limits.global_
        self._global_rates = [Rate(GLOBAL_RPS, g.rps, 1.0)] if g.rps else []
        self._global_gates = [(GLOBAL_GATE, g.max_concurrent)] if g.max_concurrent else []
        self._queue, self._waiting = g.queue, 0
        self._last_warning = -1e9

    async def request(self, ctx: Context) -> KeygateError | None:
        key = ctx.key
        assert key is not None
        plan = self._rates.plan(key, ctx.team)
        res = self._budget._before(ctx)
        if isinstance(res, KeygateError):
            return res
        rates, gates = plan.rates, plan.gates
        if self._global_rates or self._global_gates:
            rates, gates = rates + self._global_rates, gates + self._global_gates
        if not rates and not gates and res is None:
            return None  # no limit applies: the counters are not asked
        cost = 0
        if plan.tokens:
            est = ctx.estimate or estimate(ctx, self._limits)
            if isinstance(est, KeygateError):
                return est
            cost = est[0] + est[1]
        costs = plan.costs(cost) + [1.0] * len(self._global_rates)
        ask = Ask(rates, costs, gates)
        if res is not None:
            _budget_ask(ask, res)
        got = await self._admit(ask, plan)
        if isinstance(got, KeygateError):
            return got
        if isinstance(got, BudgetShort):
            assert res is not None
            return self._budget._exhausted(res.plan.budgets[got.index], ctx.ts, res.names[got.index])
        if plan.tokens and ctx.estimate is not None:
            cap_output(ctx, ctx.estimate)  # the upstream stops at the output charged
        if res is not None:
            if got.output < res.output:  # clamped to what the budgets have left
                self._budget._set_max_output(ctx, res, got.output)
                res.amounts = res.worst_case()
            self._budget._held(ctx, res)
        if plan.kinds and got.afters:
            ctx.limit_headers = (plan.replaces, plan.headers(got.afters, got.now, []))
        ctx.extras["limits"] = (plan, cost, got, gates)
        return None

    async def _admit(self, ask: Ask, plan: Plan) -> _Open | Admitted | BudgetShort | KeygateError:
        deadline = time.monotonic() + self._limits.global_.queue_timeout
        while True:
            now = monotonic()
            try:
                got = await self._counters.admit(ask, now)
            except CountersUnavailable as exc:
                if not self._open:
                    self._warn("shared counters unavailable: requests with limits refused (503)", exc)
                    return UNAVAILABLE
                self._warn("shared counters unavailable: requests admitted WITHOUT limits", exc)
                return _Open(ask.output)
            if not isinstance(got, Refused):
                return got
            if got.gate is not None and got.gate != GLOBAL_GATE:
                return self._rates._refusal(plan, got)
            if got.denied is not None and got.denied.name != GLOBAL_RPS:
                return self._rates._refusal(plan, got)
            # The global caps: wait in this instance's bounded queue, then ask again.
            wait = got.retry_after if got.denied is not None else 0.05
            if not self._queue or self._waiting >= self._queue or now + wait > deadline:
                return _busy(wait if got.denied is not None else 1.0)
            self._waiting += 1
            try:
                await asyncio.sleep(min(wait, 0.05) if got.denied is None else wait)
            finally:
                self._waiting -= 1

    def _warn(self, message: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.error(message, extra={"error": str(exc)})

    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        return self._budget.chunk(ctx, data)

    def complete(self, ctx: Context) -> None:
        taken = ctx.extras.pop("limits", None)
        if taken is None:
            return
        plan, cost, got, gates = taken
        res: Reservation | None = ctx.extras.pop("budget", None)
        budgets: list[str] = []
        spent: list[float] = []
        if res is not None:
            budgets, spent = res.names, self._budget.spends(ctx, res)
        delta = 0
        if plan.tokens:
            usage = ctx.usage
            if not usage.reported:
                est = ctx.estimate
                if est is not None:
                    charge_unreported(ctx, est[0], est[1])
            delta = usage.prompt_tokens + usage.completion_tokens - cost
        if isinstance(got, _Open):
            if not budgets:
                return  # admitted without the counters: nothing to give back but spend
            done = Done(None, budgets=budgets, spent=spent)
        else:
            done = Done(got.lease, [g for g, _ in gates], plan.tokens, delta, budgets, got.holds, spent)
        settled = None
        if res is not None:

            def settled(pairs: list[tuple[float, float]], res: Reservation = res) -> None:
                self._budget.crossed(res, pairs)

        self._counters.release(done, settled)

    async def start(self) -> None:
        await self._budget.start()

    async def stop(self) -> None:
        await self._budget.stop()


class _Open:
    """Admitted without the counters (``on_counter_failure: open``): nothing held, nothing taken."""

    __slots__ = ("afters", "holds", "lease", "now", "output")

    def __init__(self, output: int) -> None:
        self.output = output
        self.afters: list[float] = []
        self.holds: list[str] = []
        self.lease = None
        self.now = 0.0


def _budget_ask(ask: Ask, res: Reservation) -> None:
    """The budget part of ``ask``: per budget, the prompt's cost and the cost of one output token."""
    plan, price = res.plan, res.price
    base: list[float] = []
    unit: list[float] = []
    for b in plan.budgets:
        if b.kind == "tokens":
            base.append(float(res.prompt))
            unit.append(1.0)
        else:
            assert price is not None
            base.append(res.prompt * price.input / 1e6)
            unit.append(price.output / 1e6)
    ask.budgets, ask.budget_limits, ask.base, ask.unit = res.names, plan.limits, base, unit
    ask.output, ask.need, ask.step = res.output, (res.choices if res.output else 0), res.choices
