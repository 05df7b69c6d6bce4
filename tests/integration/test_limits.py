"""Rate limits, concurrency caps and upstream 429s, through a real keygate and the mock upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from keygate.testing import MockUpstream

from ..helpers import Gateway

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("limits"), upstream.url) as g:
        yield g


def _post_many(url: str, key: str, n: int) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            headers = {"authorization": f"Bearer {key}"}
            return list(
                await asyncio.gather(
                    *(client.post("/chat/completions", json=CHAT, headers=headers) for _ in range(n))
                )
            )

    return asyncio.run(run())


def test_exactly_ten_of_a_hundred_simultaneous(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("rpm10", "--rpm", "10")["key"]
    responses = _post_many(gw.url, key, 100)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 10
    assert statuses.count(429) == 90
    assert len(mock.requests) == 10  # the refused 90 never reached the upstream
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "10"
    assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 10
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limit_exceeded"


def test_sdk_sees_openai_rate_limit_error(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("rpm1", "--rpm", "1")["key"]
    client = OpenAI(base_url=gw.url, api_key=key, max_retries=0)
    first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"]
    assert info.value.code == "rate_limit_exceeded"
    assert len(mock.requests) == 1


def test_team_limit_is_shared_by_its_keys(gw: Gateway, mock: MockUpstream) -> None:
    gw.cli("teams", "create", "squad", "--rpm", "2")
    a = gw.create_key("a", "--team", "squad")["key"]
    b = gw.create_key("b", "--team", "squad")["key"]
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        codes = [
            http.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {k}"}).status_code
            for k in (a, b, a, b)
        ]
    assert codes == [200, 200, 429, 429]
    assert len(mock.requests) == 2


def test_tokens_per_minute_counts_the_worst_case(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("tpm", "--tpm", "300")["key"]
    with httpx.Client(base_url=gw.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
        big = http.post("/chat/completions", json={**CHAT, "max_tokens": 1000})
        assert big.status_code == 429  # can never fit: 1000 output tokens > 300 per minute
        assert big.headers["x-ratelimit-limit-tokens"] == "300"
        ok = http.post("/chat/completions", json={**CHAT, "max_tokens": 50})
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-tokens"] == "300"
        assert int(ok.headers["x-ratelimit-remaining-tokens"]) < 300
    assert len(mock.requests) == 1


def test_a_stream_counts_as_in_flight_until_it_ends(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("conc1", "--max-concurrent", "1")["key"]
    headers = {"authorization": f"Bearer {key}"}
    mock.fail_next("slow", delay=2.0)  # two seconds between events: the stream stays open
    with httpx.Client(base_url=gw.url, timeout=30, headers=headers) as http:
        with httpx.stream(
            "POST", f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=headers
        ) as stream:
            assert stream.status_code == 200
            chunks = stream.iter_raw()  # keep the generator: dropping it closes the stream
            assert next(chunks)  # the stream has started and is in flight
            second = http.post("/chat/completions", json=CHAT)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert len(mock.requests) == 1
        # The client closed its stream: the slot frees as soon as keygate notices.
        deadline = time.monotonic() + 10
        while (third := http.post("/chat/completions", json=CHAT)).status_code == 429:
            assert time.monotonic() < deadline, "the stream's slot was never released"
            time.sleep(0.05)
        assert third.status_code == 200


def test_upstream_429_reaches_the_client_and_is_counted(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("up429", "--rpm", "5")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    mock.fail_next("429", retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "7"
    # keygate's own counts replace the upstream's in the x-ratelimit headers
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "5"
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "4"
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    assert entry["status"] == 429


def test_global_cap_answers_503_with_retry_after(
    upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    extra = {"limits": {"global": {"max_concurrent": 1, "queue": 0}}}
    with Gateway(tmp_path, upstream.url, extra=extra) as g:
        one = g.create_key("one")["key"]
        two = g.create_key("two")["key"]
        mock.fail_next("slow", delay=2.0)
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


def test_global_queue_waits_for_a_slot(upstream: MockUpstream, mock: MockUpstream, tmp_path: Path) -> None:
    extra = {"limits": {"global": {"max_concurrent": 2, "queue": 100, "queue_timeout": 30}}}
    with Gateway(tmp_path, upstream.url, extra=extra) as g:
        key = g.create_key("q")["key"]
        responses = _post_many(g.url, key, 20)
        assert [r.status_code for r in responses] == [200] * 20
        assert len(mock.requests) == 20
