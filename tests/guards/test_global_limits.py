"""The gateway-wide caps that protect the upstream account: requests per second and in flight,
refused at once (503 with Retry-After) or queued for a bounded time; upstream 429s counted. In
process first, then through a real keygate in front of the mock upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keygate.context import Context
from keygate.errors import UpstreamUnavailable
from keygate.guards.global_limits import GlobalLimit, QueuedGlobalLimit, global_limit
from keygate.limitconf import GlobalLimits, parse_limits
from keygate.testing import MockUpstream, context, run_complete, run_request

from ..helpers import Gateway
from .common import logged, post_many

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _caps(**raw: Any) -> GlobalLimits:
    return parse_limits({"global": raw}).global_


def _ctx() -> Context:
    return context(json=CHAT)


def _busy(err: object) -> dict[str, str]:
    assert isinstance(err, UpstreamUnavailable) and err.status == 503 and err.code == "gateway_busy"
    assert err.message == "The gateway is at its upstream capacity; please retry shortly."
    return dict(err.headers)


def test_the_factory_queues_only_when_asked_to() -> None:
    assert type(global_limit(_caps())) is GlobalLimit
    assert type(global_limit(_caps(queue=0, max_concurrent=1))) is GlobalLimit
    assert type(global_limit(_caps(queue=3, max_concurrent=1))) is QueuedGlobalLimit


def test_without_caps_everything_passes() -> None:
    guard = global_limit(_caps())

    async def run() -> None:
        for _ in range(1000):
            ctx = _ctx()
            assert await run_request(guard, ctx) is None
            assert "global_slot" not in ctx.extras

    asyncio.run(run())


# -- refused at once (no queue) ------------------------------------------------------------------


def test_requests_per_second_are_smooth_and_refused_with_retry_after() -> None:
    guard = global_limit(_caps(rps=20))  # one every 50 ms, a burst of 20

    async def run() -> None:
        assert [await run_request(guard, _ctx()) for _ in range(20)] == [None] * 20
        assert _busy(await run_request(guard, _ctx())) == {"retry-after": "1"}
        await asyncio.sleep(0.06)  # one more has drained
        assert await run_request(guard, _ctx()) is None
        _busy(await run_request(guard, _ctx()))

    asyncio.run(run())


def test_requests_in_flight_are_capped_until_they_complete() -> None:
    guard = global_limit(_caps(max_concurrent=2))

    async def run() -> None:
        first, second, third = _ctx(), _ctx(), _ctx()
        assert await run_request(guard, first) is None and first.extras["global_slot"] is True
        assert await run_request(guard, second) is None
        assert _busy(await run_request(guard, third)) == {"retry-after": "1"}
        run_complete(guard, third)  # a refused request holds no slot: freeing nothing
        assert _busy(await run_request(guard, _ctx()))
        run_complete(guard, first)
        assert "global_slot" not in first.extras
        run_complete(guard, first)  # once only
        again = _ctx()
        assert await run_request(guard, again) is None
        assert _busy(await run_request(guard, _ctx()))
        run_complete(guard, second)
        run_complete(guard, again)
        assert [await run_request(guard, c) for c in (_ctx(), _ctx())] == [None, None]

    asyncio.run(run())


def test_upstream_429s_are_counted_and_logged() -> None:
    guard = global_limit(_caps())
    with logged("keygate.limits") as records:
        guard.response_start(_ctx(), 200, [])
        guard.response_start(_ctx(), 429, [("retry-after", "7")])
        guard.response_start(_ctx(), 429, [])
    assert guard.upstream_429 == 2
    assert [r.getMessage() for r in records] == ["upstream rate limited the gateway"] * 2
    assert [r.upstream_429_total for r in records] == [1, 2]  # type: ignore[attr-defined]


# -- queued --------------------------------------------------------------------------------------


def test_a_queued_request_gets_the_slot_the_first_one_frees() -> None:
    guard = global_limit(_caps(max_concurrent=1, queue=1, queue_timeout=5))

    async def run() -> None:
        first, second = _ctx(), _ctx()
        assert await run_request(guard, first) is None
        waiting = asyncio.ensure_future(run_request(guard, second))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        # The queue (of one) is full: the next is refused at once.
        started = time.monotonic()
        _busy(await run_request(guard, _ctx()))
        assert time.monotonic() - started < 0.5
        run_complete(guard, first)  # hands its slot to the waiter
        assert await waiting is None and second.extras["global_slot"] is True
        run_complete(guard, second)
        third = _ctx()
        assert await run_request(guard, third) is None  # the slot is free again
        run_complete(guard, third)

    asyncio.run(run())


def test_a_queued_request_gives_up_after_the_queue_timeout() -> None:
    guard = global_limit(_caps(max_concurrent=1, queue=5, queue_timeout=0.05))

    async def run() -> None:
        first = _ctx()
        assert await run_request(guard, first) is None
        started = time.monotonic()
        late = _ctx()
        _busy(await run_request(guard, late))
        assert 0.04 <= time.monotonic() - started < 1.0 and "global_slot" not in late.extras
        run_complete(guard, first)  # no waiter left: the slot is simply free
        again = _ctx()
        assert await run_request(guard, again) is None
        run_complete(guard, again)

    asyncio.run(run())


def test_a_cancelled_waiter_leaves_the_queue_without_a_slot() -> None:
    guard = global_limit(_caps(max_concurrent=1, queue=5, queue_timeout=5))

    async def run() -> None:
        first, gone, patient = _ctx(), _ctx(), _ctx()
        assert await run_request(guard, first) is None
        leaving = asyncio.ensure_future(run_request(guard, gone))
        staying = asyncio.ensure_future(run_request(guard, patient))
        await asyncio.sleep(0.01)
        leaving.cancel()  # the client went away while waiting
        with pytest.raises(asyncio.CancelledError):
            await leaving
        run_complete(guard, first)  # the slot goes past the cancelled waiter to the next one
        assert await staying is None and patient.extras["global_slot"] is True
        run_complete(guard, patient)
        last = _ctx()
        assert await run_request(guard, last) is None
        run_complete(guard, last)

    asyncio.run(run())


def test_a_waiter_cancelled_as_it_is_handed_the_slot_does_not_leak_it() -> None:
    guard = global_limit(_caps(max_concurrent=1, queue=5, queue_timeout=5))

    async def run() -> None:
        first, handed = _ctx(), _ctx()
        assert await run_request(guard, first) is None
        waiting = asyncio.ensure_future(run_request(guard, handed))
        await asyncio.sleep(0.01)
        run_complete(guard, first)  # the slot is handed over...
        waiting.cancel()  # ...and the waiter is cancelled before it runs again
        try:
            await waiting
        except asyncio.CancelledError:
            assert "global_slot" not in handed.extras  # it passed the slot on
        else:
            run_complete(guard, handed)  # it kept the slot (and the request went on): freed here
        # Either way no slot is lost: one request fits, and only one.
        one, two = _ctx(), _ctx()
        assert await run_request(guard, one) is None
        blocked = asyncio.ensure_future(run_request(guard, two))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        run_complete(guard, one)
        assert await blocked is None
        run_complete(guard, two)

    asyncio.run(run())


def test_queued_requests_per_second_wait_for_the_bucket() -> None:
    guard = global_limit(_caps(rps=20, queue=10, queue_timeout=2))

    async def run() -> None:
        for _ in range(20):
            assert await run_request(guard, _ctx()) is None
        started = time.monotonic()
        assert await run_request(guard, _ctx()) is None  # waited for one to drain (50 ms)
        assert 0.03 <= time.monotonic() - started < 1.0

    asyncio.run(run())


def test_queued_requests_per_second_are_refused_when_the_wait_is_too_long() -> None:
    guard = global_limit(_caps(rps=1, queue=10, queue_timeout=0.1))

    async def run() -> None:
        assert await run_request(guard, _ctx()) is None
        started = time.monotonic()
        assert _busy(await run_request(guard, _ctx())) == {"retry-after": "1"}  # 1 s > 0.1 s
        assert time.monotonic() - started < 0.5

    asyncio.run(run())


def test_queued_requests_per_second_are_refused_when_the_queue_is_full() -> None:
    guard = global_limit(_caps(rps=2, queue=1, queue_timeout=5))

    async def run() -> None:
        assert [await run_request(guard, _ctx()) for _ in range(2)] == [None, None]
        waiting = asyncio.ensure_future(run_request(guard, _ctx()))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        _busy(await run_request(guard, _ctx()))
        assert time.monotonic() - started < 0.5
        assert await waiting is None  # the queued one got in after its wait (half a second)

    asyncio.run(run())


# -- through a real gateway ----------------------------------------------------------------------


@pytest.fixture
def gw_factory(upstream: MockUpstream, tmp_path: Path) -> Iterator[Any]:
    made: list[Gateway] = []

    def make(**caps: Any) -> Gateway:
        g = Gateway(tmp_path / str(len(made)), upstream.url, extra={"limits": {"global": caps}}).start()
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


def test_global_cap_answers_503_with_retry_after(gw_factory: Any, mock: MockUpstream) -> None:
    g = gw_factory(max_concurrent=1, queue=0)
    one = g.create_key("one")["key"]
    two = g.create_key("two")["key"]
    mock.fail_next("slow", delay=0.5)
    with httpx.Client(base_url=g.url, timeout=30) as http:
        with http.stream(
            "POST",
            "/chat/completions",
            json={**CHAT, "stream": True},
            headers={"authorization": f"Bearer {one}"},
        ) as stream:
            chunks = stream.iter_raw()
            assert next(chunks)
            busy = http.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {two}"})
            assert busy.status_code == 503
            assert int(busy.headers["retry-after"]) >= 1
            assert busy.json()["error"]["code"] == "gateway_busy"
        assert len(mock.requests) == 1


def test_global_queue_waits_for_a_slot(gw_factory: Any, mock: MockUpstream) -> None:
    g = gw_factory(max_concurrent=2, queue=100, queue_timeout=30)
    key = g.create_key("q")["key"]
    responses = post_many(g.url, key, 20, CHAT)
    assert [r.status_code for r in responses] == [200] * 20
    assert len(mock.requests) == 20


def test_global_rps_refuses_past_its_burst(gw_factory: Any, mock: MockUpstream) -> None:
    g = gw_factory(rps=5)
    key = g.create_key("rps")["key"]
    statuses = sorted(r.status_code for r in post_many(g.url, key, 12, CHAT))
    assert statuses.count(200) in (5, 6)  # the burst, plus at most one drained meanwhile
    assert statuses.count(503) == 12 - statuses.count(200)
    assert len(mock.requests) == statuses.count(200)
