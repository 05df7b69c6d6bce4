"""Limits exact across gateway instances: two real keygates sharing one Redis and one database.

The Redis is a private ``redis-server`` of this module (nothing on disk), so tests can stop it and
start it again empty. What a refusal looks like and what each limit means is tested on one
in-process gateway in test_ratelimit.py and test_budget.py; here: that two instances together
allow exactly what one would, and what happens when Redis goes away.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import NotFoundError, OpenAI, RateLimitError

from keygate.counters import Ask
from keygate.counters.redis import RedisCounters
from keygate.testing import MockUpstream

from ..certs import CA
from ..helpers import Gateway
from ..redis_helpers import PrivateRedis, private_redis
from .common import CHAT, CHAT_LINE, Hook, jsonl, post_chat

BUDGET = "key:{}|tokens|lifetime"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    s = PrivateRedis(tmp_path_factory.mktemp("redis"))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


def _extra(server: PrivateRedis, shared: Path, **more: Any) -> dict[str, Any]:
    return {
        "database_url": f"sqlite:///{shared / 'keygate.db'}",
        "redis_url": server.url,
        "counter_lease": 1.0,
        # Client addresses from X-Forwarded-For, so the lockout test locks out an address of its own.
        "network": {"trusted_proxies": ["127.0.0.1/32"], "lockout": {"max_failures": 3}},
        **more,
    }


@pytest.fixture(scope="module")
def pair(
    server: PrivateRedis, shared: Path, upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    a = Gateway(tmp_path_factory.mktemp("a"), upstream.url, extra=_extra(server, shared)).start()
    b = Gateway(tmp_path_factory.mktemp("b"), upstream.url, extra=_extra(server, shared)).start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def redis_up(server: PrivateRedis) -> Iterator[PrivateRedis]:
    if server.proc is None:
        server.start()
    yield server
    if server.proc is None:
        server.start()


def _post_spread(urls: list[str], key: str, n: int, body: dict[str, Any]) -> list[httpx.Response]:
    """``n`` requests at once, spread in turn over ``urls``, each on its own connection."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as client:
            headers = {"authorization": f"Bearer {key}"}
            return list(
                await asyncio.gather(
                    *(
                        client.post(f"{urls[i % len(urls)]}/chat/completions", json=body, headers=headers)
                        for i in range(n)
                    )
                )
            )

    return asyncio.run(run())


def _wait(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
    return found


def test_exactly_ten_of_a_hundred_across_two_instances(
    pair: tuple[Gateway, Gateway], mock: MockUpstream, redis_up: PrivateRedis
) -> None:
    a, b = pair
    key = a.create_key("rpm10", "--rpm", "10")["key"]
    _wait(lambda: post_chat(b.url, "kg_unknown").status_code == 401)  # b serves
    responses = _post_spread([a.url, b.url], key, 100, dict(CHAT))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    assert len(mock.requests) == 10  # only those reached the upstream
    # Both instances let some through and refused some: the limit is one, not one each.
    by_gw = {
        url: [r.status_code for i, r in enumerate(responses) if i % 2 == n]
        for n, url in enumerate((a.url, b.url))
    }
    assert all(429 in codes for codes in by_gw.values())
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "10"
    assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 10
    refused = next(r for r in responses if r.status_code == 429)
    assert (
        refused.json()["error"]["code"] == "rate_limit_exceeded" and int(refused.headers["retry-after"]) >= 1
    )
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_failed_authentications_on_both_instances_lock_the_address_out_on_both(
    pair: tuple[Gateway, Gateway], mock: MockUpstream, redis_up: PrivateRedis
) -> None:
    a, b = pair
    key = a.create_key("locked-out")["key"]
    xff = {"x-forwarded-for": "203.0.113.77"}
    assert post_chat(a.url, "kg_" + "A" * 38, **xff).status_code == 401
    assert post_chat(b.url, "kg_" + "B" * 38, **xff).status_code == 401
    assert post_chat(a.url, "kg_" + "C" * 38, **xff).status_code == 401  # the third, over two instances

    def locked(gw: Gateway) -> bool:
        r = post_chat(gw.url, key, **xff)
        return r.status_code == 429 and r.json()["error"]["code"] == "auth_locked_out"

    _wait(lambda: locked(a) and locked(b), timeout=3.0)  # even with a valid key, on both
    assert post_chat(b.url, key, **{"x-forwarded-for": "203.0.113.78"}).status_code == 200


def test_global_caps_are_one_for_all_instances(
    server: PrivateRedis, shared: Path, upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    extra = _extra(server, shared, limits={"global": {"rps": 3}})
    g1 = Gateway(tmp_path / "g1", upstream.url, extra=extra)
    g2 = Gateway(tmp_path / "g2", upstream.url, extra=extra)
    with g1, g2:
        key = g1.create_key("global")["key"]
        t0 = time.monotonic()
        responses = _post_spread([g1.url, g2.url], key, 30, dict(CHAT))
        elapsed = time.monotonic() - t0
        ok = [r.status_code for r in responses].count(200)
        busy = [r for r in responses if r.status_code == 503]
        assert busy and busy[0].json()["error"]["code"] == "gateway_busy"
        # One bucket of 3 per second for both (refilling while the burst was answered), not 3 each.
        assert 3 <= ok <= 3 + int(3 * elapsed)
        assert len(mock.requests) == ok


def test_a_token_budget_holds_under_concurrent_streams_on_two_instances(
    pair: tuple[Gateway, Gateway], mock: MockUpstream, redis_up: PrivateRedis
) -> None:
    a, b = pair
    made = a.create_key("streams", "--budget-tokens", "300/lifetime")
    body = {**CHAT, "stream": True, "max_tokens": 40}
    responses = _post_spread([a.url, b.url], made["key"], 24, body)
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert ok and refused and len(ok) + len(refused) == 24
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
    client = redis_up.client()

    def settled() -> tuple[float, float] | None:
        s, h = client.hmget("keygate:b:" + BUDGET.format(made["id"]), "s", "h")
        return (float(s), float(h or 0)) if s is not None and float(h or 0) == 0 else None

    spent, _ = _wait(settled)
    assert spent <= 300  # never beyond the budget: every stream held its worst case first
    assert len(mock.requests) == len(ok)


def test_slots_of_a_vanished_instance_free_within_the_lease(
    pair: tuple[Gateway, Gateway], mock: MockUpstream, redis_up: PrivateRedis
) -> None:
    a, b = pair
    made = a.create_key("conc1", "--max-concurrent", "1")

    async def vanish() -> None:
        # Another instance takes the key's slot and dies without giving it back (as after kill -9).
        lost = RedisCounters(redis_up.url, lease=1.0)
        await lost.admit(Ask(gates=[(f"k:{made['id']}:conc", 1)]), 0.0)
        await lost.close()

    asyncio.run(vanish())
    t0 = time.monotonic()
    refused = post_chat(b.url, made["key"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    _wait(lambda: post_chat(b.url, made["key"]).status_code == 200, timeout=5.0)
    assert time.monotonic() - t0 < 2.5  # the lease is 1 s


def test_redis_down_refuses_limited_keys_with_503_and_serves_the_others(
    pair: tuple[Gateway, Gateway], mock: MockUpstream, redis_up: PrivateRedis
) -> None:
    a, b = pair
    limited = a.create_key("limited", "--rpm", "100")["key"]
    free = a.create_key("free")["key"]
    assert post_chat(b.url, limited).status_code == 200
    redis_up.stop()
    refused = post_chat(b.url, limited)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "counters_unavailable" and error["type"] == "server_error"
    assert refused.headers["retry-after"] == "1"
    assert post_chat(b.url, free).status_code == 200  # a key without limits never asks Redis
    assert any("shared counters unavailable" in e.get("event", "") for e in b.log_entries())
    redis_up.start()  # back, empty: the gateway reconnects by itself
    _wait(lambda: post_chat(b.url, limited).status_code == 200)


def test_a_budget_is_still_enforced_after_redis_restarted_empty(
    pair: tuple[Gateway, Gateway], mock: MockUpstream, redis_up: PrivateRedis
) -> None:
    a, b = pair
    made = a.create_key("rebuilt", "--budget-tokens", "300/lifetime")
    words = {**CHAT, "messages": [{"role": "user", "content": " ".join(["word"] * 200)}], "max_tokens": 1}
    assert post_chat_body(a.url, made["key"], words).status_code == 200  # 200 + 1 of 300 spent
    # Persisted in its batch, then Redis loses everything.
    _wait(lambda: _stored_spend(a, made["id"]) >= 201)
    redis_up.stop()
    redis_up.start()
    again = post_chat_body(b.url, made["key"], words)  # 201 + 201 > 300: refused, from the store's count
    assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"
    assert len(mock.requests) == 1


def test_open_on_failure_admits_without_limits_and_says_so(
    server: PrivateRedis, shared: Path, upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    extra = _extra(server, shared, on_counter_failure="open")
    with Gateway(tmp_path / "open", upstream.url, extra=extra) as gw:
        key = gw.create_key("open", "--rpm", "1")["key"]
        assert post_chat(gw.url, key).status_code == 200
        assert post_chat(gw.url, key).status_code == 429
        server.stop()
        try:
            assert post_chat(gw.url, key).status_code == 200  # admitted: Redis cannot say no
            assert post_chat(gw.url, key).status_code == 200
            logged = [e for e in gw.log_entries() if "WITHOUT limits" in e.get("event", "")]
            assert len(logged) == 1 and logged[0]["level"] == "error"  # loud, and rate-limited
        finally:
            server.start()


def post_chat_body(url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{url}/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _stored_spend(gw: Gateway, key_id: str) -> float:
    path = gw.settings().database_path
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT spent FROM spend WHERE name = ?", (BUDGET.format(key_id),)).fetchone()
    return float(row[0]) if row else 0.0


def test_the_soft_threshold_notice_is_sent_once_settled_on_shared_counters(
    server: PrivateRedis, shared: Path, upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    hook = Hook()
    try:
        limits = {"soft_threshold": 0.5, "webhook_url": hook.url}
        with Gateway(tmp_path / "soft", upstream.url, extra=_extra(server, shared, limits=limits)) as gw:
            made = gw.create_key("soft", "--budget-tokens", "300/lifetime")
            wordy = {**CHAT, "messages": [{"role": "user", "content": "a " * 200}], "max_tokens": 1}
            assert post_chat_body(gw.url, made["key"], wordy).status_code == 200  # 201 of 300: past 50%
            calls = _wait(lambda: [h for h in list(hook.received) if h.get("id") == made["id"]])
            assert len(calls) == 1 and calls[0]["event"] == "budget.soft_threshold"
            assert calls[0]["spent"] == 201 and calls[0]["budget"] == 300
    finally:
        hook.close()


def test_a_batch_is_held_on_shared_budgets_past_the_lease_and_settled_by_either_instance(
    pair: tuple[Gateway, Gateway], mock: MockUpstream, redis_up: PrivateRedis
) -> None:
    a, b = pair
    made = a.create_key("batches", "--budget-tokens", "120/lifetime")  # room for one line's hold
    on_a, on_b = (OpenAI(base_url=g.url, api_key=made["key"], max_retries=0) for g in (a, b))
    source = on_a.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")

    def create(sdk: OpenAI) -> Any:
        return sdk.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    batch = create(on_a)
    _wait(lambda: _visible(on_b, source.id))  # b has the record of a's upload (and of the batch)
    sent = len(mock.requests)
    with pytest.raises(RateLimitError) as caught:  # the hold a took leaves b too little
        create(on_b)
    assert caught.value.code == "insufficient_quota" and len(mock.requests) == sent
    name = BUDGET.format(made["id"])

    async def state() -> tuple[float, float]:
        reader = RedisCounters(redis_up.url)
        try:
            ((spent, held),) = await reader.available([name])  # (drops what expired, charging it)
            return spent, held
        finally:
            await reader.close()

    time.sleep(1.5)  # past counter_lease (1 s): a request's hold would have expired by now
    spent, held = asyncio.run(state())
    assert spent == 0 and 60 < held <= 120  # still held, not charged: a batch's hold has no lease
    # Its results, read through the other instance, settle it: the hold becomes what the lines used.
    _wait(lambda: _visible(on_b, batch.id, batches=True))
    done = on_b.batches.retrieve(batch.id)
    on_b.files.content(done.output_file_id)  # type: ignore[arg-type]
    spent, held = _wait(lambda: (got := asyncio.run(state()))[1] == 0 and got)
    assert 0 < spent < 60 and held == 0
    assert create(on_b).id  # room again


def _visible(sdk: OpenAI, object_id: str, batches: bool = False) -> bool:
    try:
        (sdk.batches.retrieve if batches else sdk.files.retrieve)(object_id)
    except NotFoundError:
        return False
    return True


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_batch_under_a_budget_while_redis_is_away_is_503_or_admitted_open_and_still_charged(
    mode: str, server: PrivateRedis, shared: Path, upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    extra = _extra(server, shared, on_counter_failure=mode)
    with Gateway(tmp_path / mode, upstream.url, extra=extra) as gw:
        made = gw.create_key(f"batch-{mode}", "--budget-tokens", "1000/lifetime")
        sdk = OpenAI(base_url=gw.url, api_key=made["key"], max_retries=0)
        source = sdk.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")
        sent = len(mock.requests)
        server.stop()
        try:
            create = sdk.batches.with_raw_response.create
            if mode == "closed":
                with pytest.raises(openai.InternalServerError) as caught:
                    create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
                assert caught.value.status_code == 503 and caught.value.code == "counters_unavailable"
                assert len(mock.requests) == sent  # not sent: nothing could be held
                return
            batch = create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
            assert batch.http_response.status_code == 200  # admitted, nothing held, said loudly
            assert any("WITHOUT a budget hold" in e.get("event", "") for e in gw.log_entries())
        finally:
            server.start()
        # Redis back: the results, once read, are still charged to the budget.
        done = sdk.batches.retrieve(batch.parse().id)
        sdk.files.content(done.output_file_id)  # type: ignore[arg-type]
        client = server.client()

        def spent() -> float:
            s, h = client.hmget("keygate:b:" + BUDGET.format(made["id"]), "s", "h")
            return float(s or 0) if float(h or 0) == 0 else 0.0

        assert 0 < _wait(spent) < 100


def test_counters_over_tls_with_the_configured_ca_and_refused_without_it(
    upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    ca = CA("redis-test-ca")
    cert, key = ca.write(tmp_path, "redis", "localhost", server=True)
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    with private_redis(tmp_path / "redis", tls=(cert, key, tmp_path / "ca.pem")) as tls_redis:
        extra = {"redis_url": tls_redis.url, "redis_ca_file": str(tmp_path / "ca.pem")}
        with Gateway(tmp_path / "trusting", upstream.url, extra=extra) as gw:
            made = gw.create_key("over-tls", "--rpm", "1")
            assert post_chat(gw.url, made["key"]).status_code == 200
            assert post_chat(gw.url, made["key"]).status_code == 429  # decided in Redis, over TLS
            assert tls_redis.client().exists(f"keygate:r:k:{made['id']}:rpm") == 1
        # Without the CA, the server's certificate is not trusted: refused, never sent in the clear.
        with Gateway(tmp_path / "doubting", upstream.url, extra={"redis_url": tls_redis.url}) as gw:
            made = gw.create_key("untrusted", "--rpm", "1")
            refused = post_chat(gw.url, made["key"])
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "counters_unavailable"


# The least a keygate user needs in Redis, as docs/redis.md gives it: its own keys and channel,
# the script calls, and what the scripts call.
KEYGATE_ACL = (
    "~keygate:* &keygate:* -@all +evalsha +script|load +exists +ping +select +subscribe +unsubscribe"
    " +time +get +set +del +pexpire +zadd +zrem +zcard +zscore +zrangebyscore +zremrangebyscore"
    " +hmget +hset +hincrbyfloat +publish"
)


def test_an_acl_user_with_only_the_documented_permissions_is_enough(
    upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    user = f"keygate on >acl-secret-pw {KEYGATE_ACL}"
    with private_redis(tmp_path / "redis", password="admin-pw", users=(user,)) as acl_redis:
        extra = {
            "redis_url": f"redis://keygate:${{RPW}}@127.0.0.1:{acl_redis.port}/0",
            "counter_lease": 1.0,
            "network": {"trusted_proxies": ["127.0.0.1/32"], "lockout": {"max_failures": 3}},
        }
        with Gateway(tmp_path / "acl", upstream.url, extra=extra, env={"RPW": "acl-secret-pw"}) as gw:
            made = gw.create_key("acl", "--rpm", "2", "--max-concurrent", "5", "--budget-tokens", "10000")
            assert post_chat(gw.url, made["key"]).status_code == 200  # admitted and released
            assert post_chat(gw.url, made["key"]).status_code == 200
            assert post_chat(gw.url, made["key"]).status_code == 429  # the rate, decided in Redis
            xff = {"x-forwarded-for": "203.0.113.90"}
            for i in range(3):
                assert post_chat(gw.url, "kg_" + str(i) * 38, **xff).status_code == 401
            client = acl_redis.client()
            _wait(lambda: client.zscore("keygate:lk", "203.0.113.90") is not None)  # counted, locked
            time.sleep(1.0)  # the spend flush (its state script) and a lease renewal
            problems = [
                e
                for e in gw.log_entries()
                if e["level"] in ("warning", "error") and "redis" in str(e).lower()
            ]
            assert problems == []
            assert "acl-secret-pw" not in gw.stderr_path.read_text()
