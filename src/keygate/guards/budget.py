"""Budgets per key and per team, in tokens and/or US dollars, per day, week, month or lifetime.

Reserve, then settle: before forwarding, the request's worst case (estimated prompt plus max
output tokens, priced with the model's price) is held on every budget that applies; the request's
max output tokens are clamped to what the remaining budget allows, and a request whose prompt
alone does not fit is refused with 429 ``insufficient_quota``. When it completes, the hold is
released and the real usage added. So concurrent requests can overshoot a budget by no more than
the amounts held in flight, and a stream that goes past its reservation is cut off.

Under a dollar budget, a model with no price (and no ``limits.default_price``) is refused with
403 ``model_not_priced``: keygate does not forward what it cannot meter.
"""

from __future__ import annotations

from ..chain import Guard
from ..context import Context, Estimate
from ..counters import Counters, SyncCounters
from ..errors import BudgetExceeded, KeygateError, PermissionDenied
from ..limitconf import LimitSettings, Price
from ..spend import Budget, Notifier, SpendBook, budgets_of, counter_name, period_bounds, period_end
from ..types import KeyRecord, Team
from ._estimate import estimate


class _Plan:
    """A key's budgets with what every request needs precomputed, once per key record.

    The counter names hold for the current periods, ``[start, end)``; they are worked out again
    only when a period rolls over (or the clock went back).
    """

    __slots__ = ("budgets", "end", "limits", "names", "single", "soft", "start", "tokens", "usd")

    def __init__(self, budgets: list[Budget], soft_threshold: float) -> None:
        self.budgets = budgets
        self.limits = [b.amount for b in budgets]
        self.single = len(budgets) == 1
        self.usd = any(b.kind == "usd" for b in budgets)
        self.tokens = any(b.kind == "tokens" for b in budgets)
        self.soft = [soft_threshold * b.amount for b in budgets]  # spend that triggers the notice
        self.names: list[str] = []
        self.start = self.end = 0.0

    def counter_names(self, ts: float) -> list[str]:
        """The counter names at ``ts`` (callers may use ``names`` directly within the periods)."""
        if not self.start <= ts < self.end:
            self.names = [counter_name(b.scope, b.kind, b.period, ts) for b in self.budgets]
            bounds = [period_bounds(b.period, ts) for b in self.budgets]
            self.start = max(start for start, _ in bounds)
            self.end = min(end for _, end in bounds)
        return self.names


class Reservation:
    """A metered request's hold on its budgets, from the request phase to the complete phase.

    ``names`` and ``amounts`` are the counters held and how much on each (in the plan's budget
    order); ``output`` is the max output tokens reserved, which a stream may not go past (``watch``:
    the request streams on a route whose output events the meter counts), and ``field`` the body
    field that caps it.
    """

    __slots__ = (
        "amounts",
        "cut",
        "field",
        "given",
        "names",
        "output",
        "plan",
        "price",
        "prompt",
        "watch",
    )

    def __init__(
        self,
        plan: _Plan,
        names: list[str],
        price: Price | None,
        est: Estimate,
        watch: bool,
    ) -> None:
        self.plan = plan
        self.names = names
        self.price = price
        self.prompt, self.output, self.given, self.field = est
        self.amounts = self.worst_case()
        self.watch = watch
        self.cut = False

    def worst_case(self) -> list[float]:
        """The amount to hold on each budget: prompt plus max output, in tokens or priced."""
        plan, price = self.plan, self.price
        # The same for every budget of a kind (price.cost() inlined: a worst case has no cached tokens).
        tokens = float(self.prompt + self.output)
        usd = (self.prompt * price.input + self.output * price.output) / 1e6 if price is not None else 0.0
        if plan.single:
            return [tokens if plan.tokens else usd]
        return [tokens if b.kind == "tokens" else usd for b in plan.budgets]


def _not_priced(model: str | None) -> PermissionDenied:
    return PermissionDenied(
        f"This key has a dollar budget and keygate has no price for model "
        f"'{(model or '')[:100]}' on this endpoint, so the request cannot be metered.",
        code="model_not_priced",
        param="model",
    )


class BudgetGuardBase(Guard):
    """Shared by :class:`BudgetGuard` (plain, in-process counters) and :class:`AsyncBudgetGuard`."""

    name = "budget"
    needs = frozenset({"key", "team", "route", "model", "body", "json", "stream"})
    provides = frozenset({"estimate"})

    def __init__(self, counters: Counters, limits: LimitSettings, book: SpendBook) -> None:
        self._counters = counters
        self._limits = limits
        self._defaults = limits.defaults
        self._book = book
        self._notifier = Notifier(limits.webhook_url)
        self._plans: dict[str, tuple[KeyRecord, Team | None, _Plan]] = {}
        self._notified: set[str] = set()
        self._prices: dict[str | None, Price | None] = {}

    def _price(self, model: str | None) -> Price | None:
        """``price_for`` with a bounded cache: a dated model name scans the whole price table."""
        try:
            return self._prices[model]
        except KeyError:
            if len(self._prices) >= 4096:
                self._prices.clear()
            found = self._prices[model] = self._limits.price_for(model)
            return found

    def _plan(self, key: KeyRecord, team: Team | None) -> _Plan:
        cached = self._plans.get(key.id)
        if cached is not None and cached[0] is key and cached[1] is team:
            return cached[2]
        plan = _Plan(budgets_of(key, team, self._defaults), self._limits.soft_threshold)
        self._plans[key.id] = (key, team, plan)
        return plan

    def budgets(self, key: KeyRecord, team: Team | None) -> list[Budget]:
        return self._plan(key, team).budgets

    def _before(self, ctx: Context) -> Reservation | KeygateError | None:
        """The request's worst case to hold (not yet held), a refusal, or None when no budget
        applies to this request."""
        key, team = ctx.key, ctx.team
        assert key is not None
        cached = self._plans.get(key.id)  # (self._plan(), inlined: this runs for every request)
        if cached is not None and cached[0] is key and cached[1] is team:
            plan = cached[2]
        else:
            plan = self._plan(key, team)
        if not plan.budgets:
            return None
        route = ctx.route
        assert route is not None
        if not route.metered:
            # Requests without a model (listing models) cost nothing; other endpoints with a model
            # (images, audio) cannot be metered under a dollar budget.
            return _not_priced(ctx.model) if plan.usd and ctx.model is not None else None
        price: Price | None = None
        if plan.usd:
            price = self._prices.get(ctx.model) or self._price(ctx.model)
            if price is None:
                return _not_priced(ctx.model)
        est = ctx.estimate or estimate(ctx, self._limits.default_max_output_tokens)
        ts = ctx.ts
        names = plan.names if plan.start <= ts < plan.end else plan.counter_names(ts)
        return Reservation(plan, names, price, est, ctx.stream and bool(route.output_event))

    def _fit(self, ctx: Context, res: Reservation, state: list[tuple[float, float]]) -> KeygateError | None:
        """Clamp the request's max output to what is left of its budgets, or refuse it."""
        plan, price = res.plan, res.price
        prompt, output = res.prompt, res.output
        prompt_usd = price.cost(prompt, 0, 0) if price is not None else 0.0  # the same for every budget
        need = 1 if output else 0
        affordable = output
        budgets = plan.budgets
        i = 0  # (indexing rather than zip(): cheaper for the few budgets of a request)
        for spent, held in state:
            b = budgets[i]
            i += 1  # noqa: SIM113
            left = b.amount - spent - held
            if b.kind == "tokens":
                room = left - prompt
            else:
                assert price is not None
                room_usd = left - prompt_usd
                if price.output > 0:
                    room = room_usd * 1_000_000 / price.output
                else:
                    room = float(output) if room_usd >= 0 else -1.0
            if room < need:
                return self._exhausted(b, ctx.ts)
            if room < affordable:  # (room >= 0 here, so int(room) < affordable too)
                affordable = int(room)
        if affordable < output:
            self._set_max_output(ctx, res, affordable)
            res.amounts = res.worst_case()
        return None

    def _held(self, ctx: Context, res: Reservation) -> None:
        """The worst case is held. A non-streamed request without its own max tokens is capped at
        what was held: only a stream can be cut off mid-way, so only a stream may go without one."""
        if not res.given and not ctx.stream and res.output:
            self._set_max_output(ctx, res, res.output)
        touch = self._book.touch
        for name in res.names:
            touch(name)  # persisted held: a crash counts it at its worst case
        ctx.extras["budget"] = res

    @staticmethod
    def _exhausted(b: Budget, ts: float) -> BudgetExceeded:
        scope = "team" if b.scope.startswith("team:") else "key"
        unit = "US$" if b.kind == "usd" else "tokens"
        return BudgetExceeded(
            f"The {scope}'s {b.period} budget of {b.amount:g} {unit} is used up "
            "(or too little of it is left for this request).",
            retry_after=period_end(b.period, ts) if b.period != "lifetime" else 86400,
        )

    @staticmethod
    def _set_max_output(ctx: Context, res: Reservation, value: int) -> None:
        """Send the request with max output tokens ``value`` (what its reservation covers)."""
        res.output, res.given = value, True
        if res.field and ctx.json is not None:
            ctx.set_json(res.field, value)

    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        res: Reservation | None = ctx.extras.get("budget")
        if res is None or not res.watch:
            return None
        if ctx.usage.streamed > res.output:  # output events counted by the meter (metering.py)
            res.cut = True
            return BudgetExceeded(
                "The stream was cut off: it went past the output tokens its budget reservation allows.",
                code="budget_exceeded",
            )
        return None

    def complete(self, ctx: Context) -> None:
        res: Reservation | None = ctx.extras.pop("budget", None)
        if res is None:
            return
        usage = ctx.usage
        if usage.streamed and not (usage.prompt_tokens or usage.completion_tokens):
            # A stream that ended without its usage chunk (cut off, or the client left): count
            # what it used by our own estimate so nothing streamed goes unaccounted.
            usage.prompt_tokens = res.prompt
            usage.completion_tokens = usage.streamed
        # What the request used, the same for every budget of a kind.
        plan, price = res.plan, res.price
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        tokens = float(prompt + completion)
        usd = 0.0
        if price is not None:  # (price.cost(), inlined)
            cached = usage.cached_tokens
            if cached > prompt:
                cached = prompt
            usd = (
                (prompt - cached) * price.input + cached * price.cached_input + completion * price.output
            ) / 1e6
        settle, touch = self._counters.settle, self._book.touch
        budgets, soft, amounts = plan.budgets, plan.soft, res.amounts
        i = 0
        for name in res.names:
            b = budgets[i]
            before, after = settle(name, amounts[i], tokens if b.kind == "tokens" else usd)
            touch(name)
            if before < soft[i] <= after:
                self._crossed(b, name, after)
            i += 1  # noqa: SIM113

    def _crossed(self, b: Budget, counter: str, spent: float) -> None:
        """Settled spend crossed the soft threshold: tell once per budget period and process."""
        if counter not in self._notified:
            self._notified.add(counter)
            self._notify(b, counter, spent)

    def _notify(self, b: Budget, counter: str, spent: float) -> None:
        self._notifier.send(
            {
                "event": "budget.soft_threshold",
                "scope": b.scope.split(":", 1)[0],
                "id": b.scope.split(":", 1)[1],
                "name": b.label,
                "kind": b.kind,
                "period": b.period,
                "counter": counter,
                "spent": round(spent, 6),
                "budget": b.amount,
                "threshold": self._limits.soft_threshold,
            },
        )

    async def start(self) -> None:
        await self._book.start()
        await self._notifier.start()

    async def stop(self) -> None:
        await self._book.close()
        await self._notifier.stop()


class BudgetGuard(BudgetGuardBase):
    """Budgets on counters that decide without waiting: a plain request phase, no coroutine."""

    def __init__(self, counters: Counters, limits: LimitSettings, book: SpendBook) -> None:
        super().__init__(counters, limits, book)
        assert isinstance(counters, SyncCounters)
        self._now: SyncCounters = counters

    def request(self, ctx: Context) -> KeygateError | None:
        res = self._before(ctx)
        if type(res) is not Reservation:
            return res  # type: ignore[return-value]
        # Usually the whole worst case fits: one call holds it. Else clamp to what is left.
        refused = self._now.reserve_now(res.names, res.plan.limits, res.amounts)
        if refused is not None:
            err = self._fit(ctx, res, self._now.available_now(res.names))
            if err is not None:
                return err
            refused = self._now.reserve_now(res.names, res.plan.limits, res.amounts)
            if refused is not None:
                return self._exhausted(res.plan.budgets[refused], ctx.ts)
        self._held(ctx, res)
        return None


class AsyncBudgetGuard(BudgetGuardBase):
    """Budgets on counters that may wait for a round trip (a shared, networked store)."""

    async def request(self, ctx: Context) -> KeygateError | None:
        res = self._before(ctx)
        if not isinstance(res, Reservation):
            return res
        # Usually the whole worst case fits: one round trip holds it. Else clamp to what is left.
        refused = await self._counters.reserve(res.names, res.plan.limits, res.amounts)
        if refused is not None:
            err = self._fit(ctx, res, await self._counters.available(res.names))
            if err is not None:
                return err
            refused = await self._counters.reserve(res.names, res.plan.limits, res.amounts)
            if refused is not None:
                return self._exhausted(res.plan.budgets[refused], ctx.ts)
        self._held(ctx, res)
        return None


def budget_guard(counters: Counters, limits: LimitSettings, book: SpendBook) -> BudgetGuardBase:
    """The plain guard when the counters offer :class:`SyncCounters`, else the awaiting one."""
    if isinstance(counters, SyncCounters):
        return BudgetGuard(counters, limits, book)
    return AsyncBudgetGuard(counters, limits, book)
