"""Three ``keygate serve`` processes on one PostgreSQL database and one Redis: what one instance
guarantees, the three together guarantee too (docs/deployment.md, docs/redis.md).

Processes, not in-process gateways, because one test kills an instance with SIGKILL. The Redis is
a private ``redis-server`` of this module (so a test can restart it empty); the database is a
fresh one on the shared PostgreSQL server (a private one where the test stops it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keygate.testing import MockUpstream

from . import postgres as pg
from .helpers import ProcessGateway
from .redis_helpers import PrivateRedis, private_redis

LEASE = 2.0  # counter_lease of these instances: a dead instance's slots are free within it
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def _config(database_url: str, redis: PrivateRedis, **more: Any) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "redis_url": redis.url,
        "counter_lease": LEASE,
        "database_poll_interval": 0.5,
        **more,
    }


class Cluster:
    """Three gateways on one database and one Redis, in front of the test's mock upstream."""

    def __init__(self, root: Path, upstream_url: str, database_url: str, redis: PrivateRedis) -> None:
        self.secrets = pg.shared_secrets()
        self.redis = redis
        self.database_url = database_url
        self.nodes = [
            ProcessGateway(
                root / f"node{i}", upstream_url, extra=_config(database_url, redis), env=self.secrets
            )
            for i in range(3)
        ]

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def key(self, name: str, *flags: str) -> dict[str, Any]:
        return self.nodes[0].create_key(name, *flags)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(
    upstream: MockUpstream, redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with pg.database() as url:
        c = Cluster(tmp_path_factory.mktemp("cluster"), upstream.url, url, redis_server).start()
        try:
            yield c
        finally:
            c.stop()


@pytest.fixture
def nodes(cluster: Cluster, mock: MockUpstream) -> Cluster:
    """The cluster, every instance running (a test may have killed one), the mock reset."""
    for node in cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            node.proc = None
            node.start()
    return cluster


def _spread(urls: list[str], key: str, n: int, body: dict[str, Any]) -> list[httpx.Response]:
    """``n`` requests at once, spread in turn over ``urls``, each on a connection of its own."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            headers = {"authorization": f"Bearer {key}"}
            return await asyncio.gather(
                *(
                    client.post(f"{urls[i % len(urls)]}/chat/completions", json=body, headers=headers)
                    for i in range(n)
                )
            )

    return asyncio.run(run())


def _chats(mock: MockUpstream) -> int:
    return sum(1 for r in mock.requests if r.path.endswith("/chat/completions"))


def _until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Seconds until ``predicate`` holds (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - started


def test_a_rate_limit_holds_exactly_across_three_instances(nodes: Cluster, mock: MockUpstream) -> None:
    key = nodes.key("ten-a-minute", "--rpm", "10")["key"]
    answers = _spread(nodes.urls, key, 100, CHAT)
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == 10 and codes.count(429) == 90, codes
    assert _chats(mock) == 10  # only the admitted ones reached the upstream
    served_by = {i % 3 for i, r in enumerate(answers) if r.status_code == 200}
    assert served_by  # (which instance admitted which is the race's business)


def test_a_token_budget_holds_under_concurrent_streams_on_three_instances(
    nodes: Cluster, mock: MockUpstream
) -> None:
    """Each stream reserves its worst case before it is sent; spend never passes the budget."""
    key = nodes.key("streams", "--budget-tokens", "300/day")
    body = {**CHAT, "stream": True, "max_tokens": 40}
    answers = _spread(nodes.urls, key["key"], 24, body)
    admitted = [r for r in answers if r.status_code == 200]
    assert admitted and len(admitted) < 24
    assert all(r.status_code in (200, 429) for r in answers)

    def spent() -> int:
        rows = pg.execute(
            nodes.database_url,
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage"
            " WHERE key_id = %s AND status = 200",
            key["id"],
        )
        count, total = rows[0]
        return int(total) if int(count) == len(admitted) else -1

    _until(lambda: spent() >= 0, 10)
    assert 0 < spent() <= 300


def test_a_revoke_from_the_cli_is_refused_by_all_three_within_100_ms(nodes: Cluster) -> None:
    key = nodes.key("soon-revoked")
    headers = {"authorization": f"Bearer {key['key']}"}
    clients = [httpx.Client(base_url=url, headers=headers) for url in nodes.urls]
    try:
        assert all(c.get("/models").status_code == 200 for c in clients)
        nodes.nodes[1].cli("keys", "revoke", key["id"])  # a CLI process of its own
        took = _until(lambda: all(c.get("/models").status_code == 401 for c in clients), 5.0, step=0.002)
    finally:
        for c in clients:
            c.close()
    assert took < 0.1, f"the revoke took {took * 1000:.0f} ms to reach every instance"
    # The audit entries the instances and the CLI processes wrote form one chain on PostgreSQL.
    verified = nodes.nodes[2].cli("audit", "verify", "--json")
    assert json.loads(verified.stdout)["ok"] is True


def test_an_instance_killed_with_streams_in_flight_frees_its_slots_within_the_lease(
    nodes: Cluster, mock: MockUpstream
) -> None:
    key = nodes.key("two-at-a-time", "--max-concurrent", "2")["key"]
    victim, survivor = nodes.nodes[0], nodes.nodes[1]
    mock.fail_next("slow", count=2, delay=5.0)  # two streams that take a long time
    headers = {"authorization": f"Bearer {key}"}
    body = {**CHAT, "stream": True}

    def hold() -> None:
        try:
            with httpx.stream(
                "POST", f"{victim.url}/chat/completions", json=body, headers=headers, timeout=30
            ) as r:
                for _ in r.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass  # its instance dies under it

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(2)]
    for t in holders:
        t.start()
    _until(lambda: _chats(mock) == 2, 10)
    full = httpx.post(f"{survivor.url}/chat/completions", json=CHAT, headers=headers)
    assert full.status_code == 429 and full.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    killed = time.monotonic()

    def admitted() -> bool:
        r = httpx.post(f"{survivor.url}/chat/completions", json=CHAT, headers=headers)
        return r.status_code == 200

    _until(admitted, LEASE * 3, step=0.05)
    assert time.monotonic() - killed <= LEASE + 1.0  # the lease, and a little for the polling


def test_budgets_are_still_enforced_after_redis_restarts_empty(nodes: Cluster, mock: MockUpstream) -> None:
    """Spend a token budget until a request's worst case no longer fits; with Redis restarted
    empty, every instance still refuses (the budget is rebuilt from the database), where counters
    that forgot the spend would admit it again."""
    key = nodes.key("small-budget", "--budget-tokens", "24/day")
    headers = {"authorization": f"Bearer {key['key']}"}
    small = {**CHAT, "max_tokens": 5}

    def answer(url: str) -> httpx.Response:
        return httpx.post(f"{url}/chat/completions", json=small, headers=headers)

    def spent() -> float:
        return float(pg.execute(nodes.database_url, "SELECT COALESCE(SUM(spent), 0) FROM spend")[0][0])

    admitted = 0
    while True:
        before = spent()  # (read first: the spend may be saved before the answer is read)
        r = answer(nodes.urls[admitted % 3])
        if r.status_code != 200:
            break
        admitted += 1
        _until(lambda before=before: spent() > before, 10)  # type: ignore[misc]  # settled and saved
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
    assert admitted >= 1 and _chats(mock) == admitted
    nodes.redis.stop()
    nodes.redis.start()  # the same port, nothing kept
    assert nodes.redis.client().dbsize() == 0
    # Each instance reconnects by itself; until then it answers 503 (fail closed), never 200.
    for url in nodes.urls:
        _until(lambda url=url: answer(url).status_code != 503, 10, step=0.05)  # type: ignore[misc]
        again = answer(url)
        assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota", again.text
    assert _chats(mock) == admitted


def test_postgresql_away_for_ten_seconds_under_load_loses_no_usage_row(
    upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    with pg.PrivatePostgres() as server, private_redis(tmp_path / "redis") as redis:
        cluster = Cluster(tmp_path, upstream.url, server.url, redis)
        key = cluster.key("steady", "--rpm", "100000")["key"]
        cluster.start()
        try:
            stop = threading.Event()
            answered = [0]
            failures: list[str] = []

            def load(url: str) -> None:
                with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}) as client:
                    while not stop.is_set():
                        r = client.post("/chat/completions", json=CHAT)
                        if r.status_code == 200:
                            answered[0] += 1
                        else:
                            failures.append(r.text)

            threads = [threading.Thread(target=load, args=(url,)) for url in cluster.urls]
            for t in threads:
                t.start()
            try:
                _until(lambda: answered[0] >= 30, 10)
                server.stop()
                away = time.monotonic()
                at_stop = answered[0]
                while time.monotonic() - away < 10:
                    time.sleep(0.1)
                assert answered[0] > at_stop + 100  # served all along
                server.start()
                _until(lambda: answered[0] > at_stop + 150, 10)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert failures == []
            total = answered[0]
            _until(lambda: pg.execute(server.url, "SELECT COUNT(*) FROM usage")[0][0] == total, 15, step=0.1)
        finally:
            cluster.stop()
        events = [e.get("event") for node in cluster.nodes for e in node.log_entries()]
        assert "database unreachable: serving from the key cache, buffering writes" in events
