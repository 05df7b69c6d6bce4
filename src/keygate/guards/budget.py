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

from collections.abc import Mapping
from typing import Any

import orjson

from ..chain import Context, Guard
from ..counters import Counters, Hold, SyncCounters
from ..errors import BudgetExceeded, KeygateError, PermissionDenied
from ..limitconf import BUDGET_KINDS, LimitSettings, Price
from ..spend import SpendBook, counter_name, notify, period_end
from ..types import KeyRecord, Team
from ._estimate import OUTPUT_FIELDS, TOKEN_ROUTES, Estimate, estimate

# Markers of one streamed token-bearing event per route: each such event carries at least one
# token, so counting them never overestimates an upstream that keeps to its max tokens.
_MARKERS: dict[str, tuple[bytes, bytes]] = {
    "chat.completions": (b'"content":"', b'"content":""'),
    "completions": (b'"text":"', b'"text":""'),
    "responses": (b'"delta":"', b'"delta":""'),
}


class Budget:
    """One budget that applies to a request."""

    __slots__ = ("amount", "kind", "label", "period", "scope")

    def __init__(self, scope: str, label: str, kind: str, amount: float, period: str) -> None:
        self.scope = scope  # key:<id> | team:<id>
        self.label = label  # the key's or team's name, for the soft-threshold notice
        self.kind = kind  # usd | tokens
        self.amount = float(amount)
        self.period = period


def budgets_of(key: KeyRecord, team: Team | None, defaults: Mapping[str, Any]) -> list[Budget]:
    out: list[Budget] = []
    scopes: list[tuple[str, str, Mapping[str, Any]]] = [
        (f"key:{key.id}", key.name, {**{k: defaults[k] for k in BUDGET_KINDS if k in defaults}, **key.policy})
    ]
    if team is not None:
        scopes.append((f"team:{team.id}", team.name, team.policy))
    for scope, label, policy in scopes:
        for kind in BUDGET_KINDS:
            spec = policy.get(kind)
            if isinstance(spec, dict) and isinstance(spec.get("amount"), int | float):
                period = str(spec.get("period", "lifetime"))
                out.append(Budget(scope, label, kind[7:], spec["amount"], period))
    return out


class Reservation:
    __slots__ = ("budgets", "cut", "est", "holds", "markers", "price", "streamed")

    def __init__(self, budgets: list[Budget], holds: list[Hold], price: Price | None, est: Estimate) -> None:
        self.budgets = budgets
        self.holds = holds
        self.price = price
        self.est = est
        self.streamed = 0  # token-bearing events seen in a stream
        self.markers: tuple[bytes, bytes] | None = None
        self.cut = False


class _Step:
    """A metered request between looking at its budgets and holding its worst case on them."""

    __slots__ = ("budgets", "est", "names", "price", "route")

    def __init__(
        self, budgets: list[Budget], names: list[str], route: str, price: Price | None, est: Estimate
    ) -> None:
        self.budgets = budgets
        self.names = names
        self.route = route
        self.price = price
        self.est = est


class _Plan:
    """A key's budgets, and their counter names for the second they were last asked for."""

    __slots__ = ("budgets", "names", "second")

    def __init__(self, budgets: list[Budget]) -> None:
        self.budgets = budgets
        self.second = -1
        self.names: list[str] = []

    def counter_names(self, ts: float) -> list[str]:
        second = int(ts)  # a period name depends only on the second (see spend.period_key)
        if second != self.second:
            self.names = [counter_name(b.scope, b.kind, b.period, ts) for b in self.budgets]
            self.second = second
        return self.names


class BudgetGuardBase(Guard):
    """Shared by :class:`BudgetGuard` (plain, in-process counters) and :class:`AsyncBudgetGuard`."""

    name = "budget"

    def __init__(self, counters: Counters, limits: LimitSettings, book: SpendBook) -> None:
        self._counters = counters
        self._limits = limits
        self._defaults = limits.defaults
        self._book = book
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
        plan = _Plan(budgets_of(key, team, self._defaults))
        self._plans[key.id] = (key, team, plan)
        return plan

    def budgets(self, key: KeyRecord, team: Team | None) -> list[Budget]:
        return self._plan(key, team).budgets

    def _before(self, ctx: Context) -> _Step | KeygateError | None:
        """What to check (a step), a refusal, or None when no budget applies to this request."""
        assert ctx.key is not None
        plan = self._plan(ctx.key, ctx.team)
        budgets = plan.budgets
        if not budgets:
            return None
        route = ctx.route.name if ctx.route is not None else ""
        metered = route in TOKEN_ROUTES
        price: Price | None = None
        if any(b.kind == "usd" for b in budgets):
            if not metered and ctx.model is None:
                return None  # listing models and the like cost nothing
            price = self._price(ctx.model) if metered else None
            if price is None:
                return PermissionDenied(
                    f"This key has a dollar budget and keygate has no price for model "
                    f"'{(ctx.model or '')[:100]}' on this endpoint, so the request cannot be metered.",
                    code="model_not_priced",
                    param="model",
                )
        if not metered:
            return None
        est = estimate(ctx, self._limits.default_max_output_tokens)
        return _Step(budgets, plan.counter_names(ctx.ts), route, price, est)

    def _fit(self, ctx: Context, step: _Step, state: list[tuple[float, float]]) -> list[Hold] | KeygateError:
        """Clamp the request to what is left; the holds to take, or a refusal."""
        est, price = step.est, step.price
        affordable = est.output
        for b, (spent, held) in zip(step.budgets, state, strict=True):
            left = b.amount - spent - held
            if b.kind == "tokens":
                room = left - est.prompt
            else:
                assert price is not None
                room_usd = left - price.cost(est.prompt, 0, 0)
                if price.output > 0:
                    room = room_usd * 1_000_000 / price.output
                else:
                    room = est.output if room_usd >= 0 else -1
            if room < (1 if est.output else 0):
                return self._exhausted(b, ctx.ts)
            affordable = min(affordable, int(room))
        if affordable < est.output or (not est.given and not ctx.stream and est.output):
            # Clamp to what is left, and cap a non-streamed answer at its reservation: only a
            # stream can be cut off mid-way, so only a stream may go without an explicit cap.
            self._set_max_output(ctx, step.route, affordable)
            est.output, est.given = affordable, True
        return [
            Hold(n, b.amount, self._amount(b, price, est.prompt, 0, est.output))
            for n, b in zip(step.names, step.budgets, strict=True)
        ]

    def _reserved(
        self, ctx: Context, step: _Step, holds: list[Hold], refused: Hold | None
    ) -> KeygateError | None:
        if refused is not None:
            return self._exhausted(step.budgets[holds.index(refused)], ctx.ts)
        for h in holds:
            self._book.touch(h.name)  # persisted held: a crash counts it at its worst case
        res = Reservation(step.budgets, holds, step.price, step.est)
        if ctx.stream:
            res.markers = _MARKERS.get(step.route)
        ctx.extras["budget"] = res
        return None

    @staticmethod
    def _amount(b: Budget, price: Price | None, prompt: int, cached: int, output: int) -> float:
        if b.kind == "tokens":
            return float(prompt + output)
        assert price is not None
        return price.cost(prompt, cached, output)

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
    def _set_max_output(ctx: Context, route: str, value: int) -> None:
        fields = OUTPUT_FIELDS.get(route, ())
        if not fields or ctx.json is None:
            return
        data = ctx.json
        target = next((f for f in fields if f in data), fields[0])
        data[target] = value
        ctx.body = orjson.dumps(data)

    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        res: Reservation | None = ctx.extras.get("budget")
        if res is None or res.markers is None or not data:
            return None
        marker, empty = res.markers
        res.streamed += data.count(marker) - data.count(empty)
        if res.streamed > res.est.output:
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
        if usage.total_tokens == 0 and res.streamed:
            # A stream that ended without its usage chunk (cut off, or the client left): count
            # what it used by our own estimate so nothing streamed goes unaccounted.
            usage.prompt_tokens = res.est.prompt
            usage.completion_tokens = res.streamed
        for b, hold in zip(res.budgets, res.holds, strict=True):
            spent = self._amount(
                b, res.price, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
            )
            before, after = self._counters.settle(hold.name, hold.amount, spent)
            self._book.touch(hold.name)
            soft = self._limits.soft_threshold * b.amount
            if before < soft <= after and hold.name not in self._notified:
                self._notified.add(hold.name)
                notify(
                    self._limits.webhook_url,
                    {
                        "event": "budget.soft_threshold",
                        "scope": b.scope.split(":", 1)[0],
                        "id": b.scope.split(":", 1)[1],
                        "name": b.label,
                        "kind": b.kind,
                        "period": b.period,
                        "counter": hold.name,
                        "spent": round(after, 6),
                        "budget": b.amount,
                        "threshold": self._limits.soft_threshold,
                    },
                )

    async def start(self) -> None:
        await self._book.start()

    async def stop(self) -> None:
        await self._book.close()


class BudgetGuard(BudgetGuardBase):
    """Budgets on counters that decide without waiting: a plain request phase, no coroutine."""

    def __init__(self, counters: Counters, limits: LimitSettings, book: SpendBook) -> None:
        super().__init__(counters, limits, book)
        assert isinstance(counters, SyncCounters)
        self._now: SyncCounters = counters

    def request(self, ctx: Context) -> KeygateError | None:
        step = self._before(ctx)
        if not isinstance(step, _Step):
            return step
        holds = self._fit(ctx, step, self._now.available_now(step.names))
        if not isinstance(holds, list):
            return holds
        return self._reserved(ctx, step, holds, self._now.reserve_now(holds))


class AsyncBudgetGuard(BudgetGuardBase):
    """Budgets on counters that may wait for a round trip (a shared, networked store)."""

    async def request(self, ctx: Context) -> KeygateError | None:
        step = self._before(ctx)
        if not isinstance(step, _Step):
            return step
        holds = self._fit(ctx, step, await self._counters.available(step.names))
        if not isinstance(holds, list):
            return holds
        return self._reserved(ctx, step, holds, await self._counters.reserve(holds))


def budget_guard(counters: Counters, limits: LimitSettings, book: SpendBook) -> BudgetGuardBase:
    """The plain guard when the counters offer :class:`SyncCounters`, else the awaiting one."""
    if isinstance(counters, SyncCounters):
        return BudgetGuard(counters, limits, book)
    return AsyncBudgetGuard(counters, limits, book)
