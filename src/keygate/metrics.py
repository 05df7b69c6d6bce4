"""Prometheus metrics, counted off the request path.

The request path pays for two things only: the app counts arrivals (one integer increment), and
the record guard appends one tuple per finished request (:data:`Fact`: the usage row it built
anyway, and four ``perf_counter`` readings taken by the forwarder and the relay). Like the usage
recorder, :class:`Metrics` hands those facts to its own writer thread in batches, which turns them
into counts and histogram buckets kept in plain dicts under one lock per batch (prometheus_client's
own metric objects take a lock per observation, several microseconds a request for the dozen
observations made here). What only exists at scrape time (upstream key health, budgets left, the
key cache, the usage queue, requests in flight) is read when ``/metrics`` is scraped, on the event
loop that owns it. Exposition is prometheus_client's (``generate_latest`` over a registry holding
this collector). Names and labels: docs/observability.md.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from .batching import ListWriteBehind
from .config import Settings
from .counters import Counters
from .keycache import KeyCache
from .limitconf import Price, snapshot_base
from .outcomes import outcome, status_class
from .spend import budgets_of, counter_name
from .types import UsageRow
from .upstream_pool import UpstreamPool

Fact = tuple[UsageRow, float, float, float, float, float]
"""One finished request: its usage row, then ``perf_counter`` readings of its start, the first
upstream attempt sent, the upstream's answer read to its end, the first piece of a stream
relayed, and its end (0.0 for what did not happen)."""

# Bucket bounds: the OpenTelemetry GenAI conventions' advice for durations, time to first token
# and token counts; finer ones for keygate's own time.
DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
OVERHEAD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
TOKEN_BUCKETS: Final = tuple(float(4**i) for i in range(14))  # 1, 4, 16 ... 67,108,864
KEY_STATES: Final = ("up", "cooling_down", "rejected", "retired")


class _Hist:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)  # the last one: above the largest bound (+Inf only)
        self.sum = 0.0


class _HistFamily:
    """One histogram's buckets per label set, filled in the writer thread."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.series: dict[tuple[str, ...], _Hist] = {}

    def series_for(self, labels: tuple[str, ...]) -> _Hist:
        h = self.series.get(labels)
        if h is None:
            h = self.series[labels] = _Hist(len(self.bounds))
        return h

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, h in self.series.items():
            running, buckets = 0, []
            for bound, n in zip(self.bounds, h.counts, strict=False):
                running += n
                buckets.append((_bound(bound), running))
            buckets.append(("+Inf", running + h.counts[-1]))
            fam.add_metric(list(labels), buckets, h.sum)
        return fam


def _bound(value: float) -> str:
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class _Series:
    """Where one kind of request is counted: its request counter and duration buckets, and the
    label sets of what not every request of the kind has (upstream time, time to first token,
    tokens, spend), whose buckets are made when first needed, so no empty series is shown."""

    __slots__ = (
        *("count", "duration", "price", "per_route", "per_model", "per_upstream", "per_key"),
        *("upstream", "overhead", "ttft", "tokens_in", "tokens_out", "spend"),
    )

    def __init__(
        self,
        count: list[int],
        duration: _Hist,
        price: Price | None,
        labels: tuple[str, str, str, tuple[str, ...]],
    ) -> None:
        self.count, self.duration, self.price = count, duration, price
        route, model, upstream, key = labels
        self.per_route, self.per_model, self.per_upstream = (route,), (route, model), (upstream, route, model)
        self.per_key = key
        self.upstream: _Hist | None = None
        self.overhead: _Hist | None = None
        self.ttft: _Hist | None = None
        self.tokens_in: _Hist | None = None
        self.tokens_out: _Hist | None = None
        self.spend: list[float] | None = None


@dataclass
class Sources:
    """Where the scrape-time gauges come from (given by ``server.py``; each part stays its own)."""

    pool: UpstreamPool | None = None
    keys: KeyCache | None = None
    recorder: ListWriteBehind[Any] | None = None
    counters: Counters | None = None
    arrivals: Callable[[], int] = lambda: 0


class Metrics(ListWriteBehind[Fact]):
    """The metrics of one gateway: facts in, Prometheus text out."""

    def __init__(self, settings: Settings, sources: Sources | None = None) -> None:
        super().__init__(settings.usage_flush_interval, "keygate-metrics")
        self.sources = sources or Sources()
        self._limits = settings.limits
        self._per_key = settings.metrics.per_key_labels
        self._known = frozenset(settings.limits.prices) | frozenset(settings.metrics.models)
        self._labels: dict[str | None, str] = {None: "none"}
        self._lock = threading.Lock()
        self._done = 0  # facts counted so far
        # Budget names and their (spent, held), read by exposition() before each collect().
        self._budget_state: (
            tuple[dict[str, tuple[str, str, str, float]], dict[str, tuple[float, float]]] | None
        ) = None
        key = ("key_id",) if self._per_key else ()
        self._requests: dict[tuple[str, ...], list[int]] = {}
        self._cache: dict[tuple[Any, ...], _Series] = {}
        self._request_labels = ("route", "model", "status_class", "outcome", *key)
        self._spend: dict[tuple[str, ...], list[float]] = {}
        self._spend_labels = ("model", *key)
        self._duration = _HistFamily(
            "keygate_gen_ai_server_request_duration_seconds",
            "Time from a request's arrival to the end of its answer (gen_ai.server.request.duration).",
            ("route", "model", "status_class"),
            DURATION_BUCKETS,
        )
        self._upstream = _HistFamily(
            "keygate_gen_ai_client_operation_duration_seconds",
            "Time from the first upstream attempt to the end of the upstream's answer, retries "
            "included (gen_ai.client.operation.duration).",
            ("upstream", "route", "model"),
            DURATION_BUCKETS,
        )
        self._ttft = _HistFamily(
            "keygate_gen_ai_server_time_to_first_token_seconds",
            "Time from a streamed request's arrival to its first piece of the stream relayed "
            "(gen_ai.server.time_to_first_token).",
            ("route", "model"),
            TTFT_BUCKETS,
        )
        self._overhead = _HistFamily(
            "keygate_gateway_overhead_seconds",
            "Time a forwarded request spent in keygate rather than waiting on the upstream.",
            ("route",),
            OVERHEAD_BUCKETS,
        )
        self._tokens = _HistFamily(
            "keygate_gen_ai_client_token_usage",
            "Tokens per request, by type input or output (gen_ai.client.token.usage).",
            ("route", "model", "token_type", *key),
            TOKEN_BUCKETS,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- the request path ----------------------------------------------------------------------

    def observe(self, fact: Fact) -> None:
        """Called by the record guard for every finished request."""
        self._pending.append(fact)

    # -- the writer thread ---------------------------------------------------------------------

    def model_label(self, model: str | None) -> str:
        """The model as a label value: a name of the price table or ``metrics.models`` (a dated
        snapshot name counts as its base name), else ``other``; ``none`` for no model."""
        found = self._labels.get(model)
        if found is not None:
            return found
        assert model is not None
        label = "other"
        if model in self._known:
            label = model
        else:
            base = snapshot_base(model)
            if base is not None and base in self._known:
                label = base
        if label != "other" or len(self._labels) < 4096:  # only bounded names are remembered
            self._labels[model] = label
        return label

    def _series(self, row: UsageRow, forwarded: bool) -> _Series:
        """The label sets a row of this kind counts in, found once per kind."""
        model = self.model_label(row.model)
        route, sc = row.route if row.route != "-" else "none", status_class(row.status)
        key = (row.key_id or "none",) if self._per_key else ()
        labels = (route, model, sc, outcome(row.status, row.error_code, forwarded), *key)
        count = self._requests.get(labels)
        if count is None:
            count = self._requests[labels] = [0]
        duration = self._duration.series_for((route, model, sc))
        price = self._limits.price_for(row.model)
        return _Series(count, duration, price, (route, model, row.upstream or "none", key))

    def _write(self, batch: list[Fact]) -> None:
        cache, bisect_left = self._cache, bisect.bisect_left
        dur_b, tok_b, ttft_b, over_b = DURATION_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS, OVERHEAD_BUCKETS
        with self._lock:
            if len(cache) > 4096:  # bounded: the series themselves stay in their families
                cache.clear()
            for row, started, up_start, up_end, first, end in batch:
                forwarded = up_start != 0.0
                kind = (row.route, row.model, row.status, row.error_code, forwarded, row.upstream, row.key_id)
                s = cache.get(kind)
                if s is None:
                    s = cache[kind] = self._series(row, forwarded)
                s.count[0] += 1
                took = end - started
                h = s.duration
                h.counts[bisect_left(dur_b, took)] += 1
                h.sum += took
                if forwarded:
                    waited = (up_end or end) - up_start
                    h = s.upstream or self._made(s, "upstream", self._upstream, s.per_upstream)
                    h.counts[bisect_left(dur_b, waited)] += 1
                    h.sum += waited
                    own = took - waited if took > waited else 0.0
                    h = s.overhead or self._made(s, "overhead", self._overhead, s.per_route)
                    h.counts[bisect_left(over_b, own)] += 1
                    h.sum += own
                if first:
                    ttft = first - started
                    h = s.ttft or self._made(s, "ttft", self._ttft, s.per_model)
                    h.counts[bisect_left(ttft_b, ttft)] += 1
                    h.sum += ttft
                prompt, completion = row.prompt_tokens, row.completion_tokens
                if prompt or completion:
                    h = s.tokens_in or self._made(
                        s, "tokens_in", self._tokens, (*s.per_model, "input", *s.per_key)
                    )
                    h.counts[bisect_left(tok_b, prompt)] += 1
                    h.sum += prompt
                    h = s.tokens_out or self._made(
                        s, "tokens_out", self._tokens, (*s.per_model, "output", *s.per_key)
                    )
                    h.counts[bisect_left(tok_b, completion)] += 1
                    h.sum += completion
                    if s.price is not None:
                        spend = s.spend
                        if spend is None:
                            labels = (s.per_model[1], *s.per_key)
                            spend = s.spend = self._spend.setdefault(labels, [0.0])
                        spend[0] += s.price.cost(prompt, row.cached_tokens, completion)
            self._done += len(batch)

    @staticmethod
    def _made(s: _Series, slot: str, family: _HistFamily, labels: tuple[str, ...]) -> _Hist:
        h = family.series_for(labels)
        setattr(s, slot, h)
        return h

    # -- scrape time (on the event loop) -------------------------------------------------------

    async def exposition(self) -> bytes:
        """The Prometheus text of every metric, with the requests finished so far counted."""
        await self.written()
        src = self.sources
        self._budget_state = None
        if src is not None and src.keys is not None and src.counters is not None:
            # Read here, where awaiting is possible: shared counters (Redis) answer over the network.
            names = self._budget_names(src.keys)
            used = await src.counters.snapshot(list(names)) if names else {}
            self._budget_state = (names, used or {})
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = CounterMetricFamily(
                "keygate_requests",
                "Requests finished, by route, model, status class and outcome.",
                labels=self._request_labels,
            )
            for labels, n in self._requests.items():
                requests.add_metric(list(labels), n[0])
            spend = CounterMetricFamily(
                "keygate_spend_usd",
                "What finished requests cost at the price table's list prices, in US dollars.",
                labels=self._spend_labels,
            )
            for labels, usd in self._spend.items():
                spend.add_metric(list(labels), usd[0])
            families: list[Metric] = [requests, spend]
            families += [
                h.family() for h in (self._duration, self._upstream, self._ttft, self._overhead, self._tokens)
            ]
            done = self._done
        yield from families
        yield from self._gauges(done)

    def _gauges(self, done: int) -> Iterator[Metric]:
        src = self.sources
        in_flight = GaugeMetricFamily("keygate_requests_in_flight", "Requests arrived and not yet finished.")
        in_flight.add_metric([], max(0, src.arrivals() - done - len(self._pending)))
        yield in_flight
        if src.recorder is not None:
            yield GaugeMetricFamily(
                "keygate_usage_queue_depth",
                "Usage rows waiting for the writer thread.",
                value=src.recorder.queued,
            )
            yield CounterMetricFamily(
                "keygate_usage_write_failures",
                "Failed usage writes (each batch is kept and tried again).",
                value=src.recorder.failures,
            )
        if src.keys is not None:
            yield GaugeMetricFamily(
                "keygate_key_cache_keys", "Client keys in the cache.", value=len(src.keys)
            )
            yield CounterMetricFamily(
                "keygate_key_cache_reloads",
                "Times the key cache was reloaded from the store after a change.",
                value=src.keys.reloads,
            )
        if src.pool is not None:
            yield self._key_states(src.pool)
        if self._budget_state is not None:
            yield from self._budgets(*self._budget_state)

    def _key_states(self, pool: UpstreamPool) -> Metric:
        fam = GaugeMetricFamily(
            "keygate_upstream_key_state",
            "1 for each upstream key's current state (up, cooling_down, rejected, retired), else 0.",
            labels=("upstream", "key_id", "state"),
        )
        for upstream, key_id, state in pool.key_states():
            for s in KEY_STATES:
                fam.add_metric([upstream, key_id, s], 1.0 if s == state else 0.0)
        return fam

    def _budget_names(self, keys: KeyCache) -> dict[str, tuple[str, str, str, float]]:
        now, defaults = time.time(), self._limits.defaults
        names: dict[str, tuple[str, str, str, float]] = {}
        for record in keys.records():
            if not record.active:
                continue
            for b in budgets_of(record, keys.team(record.team_id), defaults):
                names[counter_name(b.scope, b.kind, b.period, now)] = (b.scope, b.kind, b.period, b.amount)
        return names

    def _budgets(
        self, names: dict[str, tuple[str, str, str, float]], used: dict[str, tuple[float, float]]
    ) -> Iterator[Metric]:
        out = {
            kind: GaugeMetricFamily(
                f"keygate_budget_remaining_{unit}",
                f"What a budget has left this period, in {unit} (its amount less spent and held).",
                labels=("budget", "period"),
            )
            for kind, unit in (("usd", "usd"), ("tokens", "tokens"))
        }
        for name, (scope, kind, period, amount) in names.items():
            spent, held = used.get(name, (0.0, 0.0))
            out[kind].add_metric([scope, period], max(0.0, amount - spent - held))
        yield from out.values()
