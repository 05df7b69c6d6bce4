"""Budgets per key and per team, in tokens and/or US dollars, per day, week, month or lifetime.

Reserve, then settle: before forwarding, the request's worst case (estimated prompt, images and
files at their worst case, plus max output tokens times the outputs it asks for, priced with the
model's price and its service tier's multiplier) is held on every budget that applies; the request
is sent with its max output tokens set to what was held (clamped to what the remaining budget
allows), streams included, so the upstream itself stops there; a request whose prompt plus one
token per output does not fit is refused with 429 ``insufficient_quota``. When it completes, the
hold is released and the real usage added; a request that may have been billed but reported no
usage is charged what was held (see ``_estimate.charge_unreported``). So concurrent requests
overshoot a budget only by what an upstream bills beyond the worst case keygate can see in a
request (input the body does not carry: see docs/limits.md), and a stream that goes past its
reservation is cut off.

Under a dollar budget, a model with no price (and no ``limits.default_price``) is refused with
403 ``model_not_priced``, and a service tier without a multiplier with 403
``service_tier_not_priced``: keygate does not forward what it cannot meter. Under any budget,
routes billed in units other than reported tokens (``Route.unit_billed``: images, audio) are
refused with 403 ``endpoint_not_priced``, and a request whose cost is only known later
(``Route.unbounded_fields``: a background response) with 400 ``background_not_allowed_with_budget``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..chain import Guard
from ..context import Context, Estimate
from ..counters import Counters, CountersUnavailable, Done, SharedCounters, SyncCounters
from ..errors import BudgetExceeded, InvalidRequest, KeygateError, PermissionDenied
from ..events import SecurityEvents
from ..limitconf import LimitSettings, Price
from ..routes import Route
from ..spend import Budget, Notifier, SpendBook, budgets_of, counter_name, period_bounds, period_end
from ..types import KeyRecord, Team
from ._estimate import charge_unreported, estimate, set_output_cap

log = logging.getLogger("keygate.limits")


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


@dataclass(slots=True)
class BatchHold:
    """A batch's worst case held on its budgets, kept with its ownership record until its results
    are read: the counters, the amount on each, and on shared counters the hold ids (Redis's
    names for the holds, which any instance can release)."""

    names: list[str]
    amounts: list[float]
    holds: list[str] | None = None

    def to_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"names": self.names, "amounts": self.amounts}
        if self.holds is not None:
            meta["holds"] = self.holds
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> BatchHold:
        holds = meta.get("holds")
        return cls(
            list(meta["names"]), [float(a) for a in meta["amounts"]], None if holds is None else list(holds)
        )


class Reservation:
    """A metered request's hold on its budgets, from the request phase to the complete phase.

    ``names`` and ``amounts`` are the counters held and how much on each (in the plan's budget
    order); ``output`` is the max output tokens reserved in all (``choices`` outputs of
    ``output // choices`` each), which a stream may not go past (``watch``: the request streams on a
    route whose output events the meter counts), and ``field`` the body field that caps it.
    """

    __slots__ = (
        "amounts",
        "choices",
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
        self.prompt, self.output, self.given, self.field, self.choices = est
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


def _tier_not_priced(tier: object) -> PermissionDenied:
    shown = tier[:50] if isinstance(tier, str) else type(tier).__name__
    return PermissionDenied(
        f"This key has a dollar budget and keygate has no price for service tier '{shown}', "
        "so the request cannot be metered.",
        code="service_tier_not_priced",
        param="service_tier",
    )


def _unbounded(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"This key has a budget, and a request with '{name}' set is billed after keygate's answer, "
        "so it cannot be held against the budget.",
        code=f"{name}_not_allowed_with_budget",
        param=name,
    )


def _endpoint_not_priced(route: Route) -> PermissionDenied:
    return PermissionDenied(
        f"This key has a budget, and keygate cannot meter the {route.name} endpoint (it is billed "
        "per image, character or minute, not in reported tokens).",
        code="endpoint_not_priced",
    )


class BudgetGuardBase(Guard):
    """Shared by :class:`BudgetGuard` (plain, in-process counters) and :class:`AsyncBudgetGuard`."""

    name = "budget"
    needs = frozenset({"key", "team", "route", "model", "body", "json", "stream"})
    provides = frozenset({"estimate"})

    def __init__(
        self, counters: Counters, limits: LimitSettings, book: SpendBook, events: SecurityEvents | None = None
    ) -> None:
        self._events = events
        self._counters = counters
        self._limits = limits
        self._defaults = limits.defaults
        self._book = book
        self._notifier = Notifier(limits.webhook_url)
        self._plans: dict[str, tuple[KeyRecord, Team | None, _Plan]] = {}
        self._notified: set[str] = set()
        self._prices: dict[str | None, Price | None] = {}
        self._tiers = limits.service_tiers
        self._auto = limits.service_tiers.get("auto")  # a request that names no tier
        self._tiered: dict[tuple[str | None, str], Price] = {}

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
            # Listing models, moderations, stored responses cost nothing; images and audio are
            # billed in units keygate cannot meter (with or without a model: OpenAI picks one).
            return _endpoint_not_priced(route) if route.unit_billed else None
        data = ctx.json
        if data and route.unbounded_fields:
            for name in route.unbounded_fields:
                value = data.get(name)
                if value is not None and value is not False:
                    return _unbounded(name)
        price: Price | None = None
        if plan.usd:
            price = self._prices.get(ctx.model) or self._price(ctx.model)
            if price is None:
                return _not_priced(ctx.model)
            tier = data.get("service_tier") if data else None
            if tier is not None or self._auto != 1.0:
                found = self._tier_price(ctx.model, price, "auto" if tier is None else tier)
                if found is None:
                    return _tier_not_priced(tier)
                price = found
        est = ctx.estimate or estimate(ctx, self._limits)
        if isinstance(est, KeygateError):
            return est
        ts = ctx.ts
        names = plan.names if plan.start <= ts < plan.end else plan.counter_names(ts)
        return Reservation(plan, names, price, est, ctx.stream and bool(route.output_events))

    def _tier_price(self, model: str | None, price: Price, tier: object) -> Price | None:
        """``price`` on service tier ``tier``, or None for a tier without a multiplier."""
        if type(tier) is not str:
            return None
        key = (model, tier)
        found = self._tiered.get(key)
        if found is None:
            factor = self._tiers.get(tier)
            if factor is None:
                return None
            if len(self._tiered) >= 4096:
                self._tiered.clear()
            found = self._tiered[key] = price.scaled(factor)
        return found

    def _fit(self, ctx: Context, res: Reservation, state: list[tuple[float, float]]) -> KeygateError | None:
        """Clamp the request's max output to what is left of its budgets, or refuse it."""
        plan, price = res.plan, res.price
        prompt, output, choices = res.prompt, res.output, res.choices
        prompt_usd = price.cost(prompt, 0, 0) if price is not None else 0.0  # the same for every budget
        need = choices if output else 0  # at least one token for each output asked for
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
                return self._exhausted(b, ctx.ts, res.names[i - 1])
            if room < affordable:  # (room >= 0 here, so int(room) < affordable too)
                affordable = int(room)
        if affordable < output:
            self._set_max_output(ctx, res, affordable - affordable % choices)
            res.amounts = res.worst_case()
        return None

    def _held(self, ctx: Context, res: Reservation) -> None:
        """The worst case is held. A request that does not cap its output at that itself is sent
        with the cap set, streams included, so the upstream stops there (reasoning tokens, which
        no stream shows, included)."""
        if not res.given and res.output:
            self._set_max_output(ctx, res, res.output)
        if res.watch:
            ctx.usage.counted = True  # the meter counts this stream's output events (metering.py)
        touch = self._book.touch
        for name in res.names:
            touch(name)  # persisted held: a crash counts it at its worst case
        ctx.extras["budget"] = res

    def _exhausted(self, b: Budget, ts: float, counter: str) -> BudgetExceeded:
        scope = "team" if b.scope.startswith("team:") else "key"
        if self._events is not None:  # (once per counter: SecurityEvents.budget_exhausted)
            self._events.budget_exhausted(
                counter,
                scope=b.scope.split(":", 1)[0],
                id=b.scope.split(":", 1)[1],
                name=b.label,
                kind=b.kind,
                period=b.period,
                budget=b.amount,
            )
        unit = "US$" if b.kind == "usd" else "tokens"
        return BudgetExceeded(
            f"The {scope}'s {b.period} budget of {b.amount:g} {unit} is used up "
            "(or too little of it is left for this request).",
            retry_after=period_end(b.period, ts) if b.period != "lifetime" else 86400,
        )

    @staticmethod
    def _set_max_output(ctx: Context, res: Reservation, value: int) -> None:
        """Send the request with max output tokens ``value`` in all (``value // choices`` for each
        output it asks for: what its reservation covers)."""
        res.output, res.given = value, True
        if res.field and ctx.json is not None:
            set_output_cap(ctx, value // res.choices)

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
        if not usage.reported:
            # No usage arrived (cut off, the client left, the upstream went silent or answered
            # no JSON): a request that may have been billed costs what was held for it.
            charge_unreported(ctx, res.prompt, res.output)
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
            got = settle(name, amounts[i], tokens if b.kind == "tokens" else usd)
            touch(name)
            if got is not None and got[0] < soft[i] <= got[1]:
                self._crossed(b, name, got[1])
            i += 1  # noqa: SIM113

    def spends(self, ctx: Context, res: Reservation) -> list[float]:
        """What the request cost on each of its budgets (the same as :meth:`complete` works out
        inline, for the plain path): for guards that settle all budgets in one call."""
        usage = ctx.usage
        if not usage.reported:
            charge_unreported(ctx, res.prompt, res.output)
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        price = res.price
        usd = 0.0
        if price is not None:
            usd = price.cost(prompt, usage.cached_tokens, completion)
        tokens = float(prompt + completion)
        return [tokens if b.kind == "tokens" else usd for b in res.plan.budgets]

    def crossed(self, res: Reservation, settled: list[tuple[float, float]]) -> None:
        """``res`` was settled, each budget's spent going from ``settled[i][0]`` to ``[1]``: mark
        them to be persisted and send the soft-threshold notice of each that crossed it."""
        plan, touch = res.plan, self._book.touch
        for i, (before, after) in enumerate(settled):
            name = res.names[i]
            touch(name)
            if before < plan.soft[i] <= after:
                self._crossed(plan.budgets[i], name, after)

    # -- batches: a worst case held at creation, settled when the results are read -------------

    def _batch_worst(
        self, ctx: Context, models: dict[str, list[int]]
    ) -> tuple[_Plan, list[str], list[float]] | KeygateError | None:
        """A batch's worst case on the key's budgets (``models``: per model ``[prompt, output]``
        tokens over its lines, each priced at its model's price): the plan, the counters and the
        amounts to hold, a refusal, or None when no budget applies."""
        key, team = ctx.key, ctx.team
        assert key is not None
        plan = self._plan(key, team)
        if not plan.budgets:
            return None
        tokens = float(sum(p + o for p, o in models.values()))
        usd = 0.0
        if plan.usd:
            for model, (prompt, output) in models.items():
                price = self._price(model)
                if price is None:
                    return _not_priced(model)
                usd += (prompt * price.input + output * price.output) / 1e6
        amounts = [tokens if b.kind == "tokens" else usd for b in plan.budgets]
        return plan, list(plan.counter_names(ctx.ts)), amounts

    def hold_batch(self, ctx: Context, models: dict[str, list[int]]) -> BatchHold | KeygateError | None:
        """Hold a batch's worst case on the key's budgets, all or nothing, on in-process counters
        (:meth:`AsyncBudgetGuard.hold_batch_shared` on shared ones): what is held (for
        :meth:`settle_batch`), a refusal, or None when no budget applies."""
        worst = self._batch_worst(ctx, models)
        if not isinstance(worst, tuple):
            return worst
        plan, names, amounts = worst
        assert isinstance(self._counters, SyncCounters)
        refused = self._counters.reserve_now(names, plan.limits, amounts)
        if refused is not None:
            return self._exhausted(plan.budgets[refused], ctx.ts, names[refused])
        for name in names:
            self._book.touch(name)
        return BatchHold(names, amounts)

    def settle_batch(self, hold: BatchHold, used: dict[str, list[int]]) -> None:
        """Release a batch's hold and add what its results report (``used``: per model
        ``[prompt, completion, cached]``; a counter's kind is in its name, ``scope|usd|period``)."""
        tokens = float(sum(p + c for p, c, _ in used.values()))
        usd = 0.0
        for model, (prompt, completion, cached) in used.items():
            price = self._price(model)
            if price is not None:
                usd += price.cost(prompt, min(cached, prompt), completion)
        spent = [usd if name.split("|")[1] == "usd" else tokens for name in hold.names]
        counters = self._counters
        if hold.holds is not None and isinstance(counters, SharedCounters):
            # Held in Redis under hold ids (by whichever instance): released by them, from here.
            counters.release(Done(None, budgets=hold.names, holds=hold.holds, spent=spent))
        else:
            for name, held, amount in zip(hold.names, hold.amounts, spent, strict=True):
                counters.settle(name, held, amount)
        for name in hold.names:
            self._book.touch(name)

    def _crossed(self, b: Budget, counter: str, spent: float) -> None:
        """Settled spend crossed the soft threshold: tell once per budget period and process."""
        if counter not in self._notified:
            self._notified.add(counter)
            self._notify(b, counter, spent)

    def _notify(self, b: Budget, counter: str, spent: float) -> None:
        notice = {
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
        }
        self._notifier.send(notice)
        if self._events is not None:
            self._events.budget_soft_threshold(notice)

    async def start(self) -> None:
        await self._book.start()
        await self._notifier.start()

    async def stop(self) -> None:
        await self._book.close()
        await self._notifier.stop()


class BudgetGuard(BudgetGuardBase):
    """Budgets on counters that decide without waiting: a plain request phase, no coroutine."""

    def __init__(
        self, counters: Counters, limits: LimitSettings, book: SpendBook, events: SecurityEvents | None = None
    ) -> None:
        super().__init__(counters, limits, book, events)
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
                return self._exhausted(res.plan.budgets[refused], ctx.ts, res.names[refused])
        self._held(ctx, res)
        return None


class AsyncBudgetGuard(BudgetGuardBase):
    """Budgets on counters that may wait for a round trip (a shared, networked store)."""

    async def hold_batch_shared(
        self, ctx: Context, models: dict[str, list[int]], open_on_failure: bool = False
    ) -> BatchHold | KeygateError | None:
        """:meth:`hold_batch` on shared counters: one round trip, and holds with no lease (a batch
        runs for hours; its hold ids are kept with its ownership record, so any instance settles
        it). Raises :class:`CountersUnavailable` when they cannot decide, unless
        ``open_on_failure``: then nothing is held, and what the results report is still added."""
        worst = self._batch_worst(ctx, models)
        if not isinstance(worst, tuple):
            return worst
        plan, names, amounts = worst
        counters = self._counters
        assert isinstance(counters, SharedCounters)
        try:
            got = await counters.hold(names, plan.limits, amounts)
        except CountersUnavailable:
            if not open_on_failure:
                raise
            log.error("shared counters unavailable: a batch admitted WITHOUT a budget hold")
            return BatchHold(names, [0.0] * len(names), [""] * len(names))
        if isinstance(got, int):
            return self._exhausted(plan.budgets[got], ctx.ts, names[got])
        for name in names:
            self._book.touch(name)
        return BatchHold(names, amounts, got)

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
                return self._exhausted(res.plan.budgets[refused], ctx.ts, res.names[refused])
        self._held(ctx, res)
        return None


def budget_guard(
    counters: Counters, limits: LimitSettings, book: SpendBook, events: SecurityEvents | None = None
) -> BudgetGuardBase:
    """The plain guard when the counters offer :class:`SyncCounters`, else the awaiting one."""
    if isinstance(counters, SyncCounters):
        return BudgetGuard(counters, limits, book, events)
    return AsyncBudgetGuard(counters, limits, book, events)
