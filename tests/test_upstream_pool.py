"""``keygate.upstream_pool``: one model of "an upstream with several keys", from the config file and
the store. In process against a real SQLite store (leases, rotation order, rejection, cool-down,
fallback, reloads), and through a real gateway (spreading, retries, fallback, reloads on change
and SIGHUP, rotation under load)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from keygate import upstream_pool
from keygate.config import Settings, load_settings
from keygate.errors import ConfigError, RateLimited, UpstreamUnavailable
from keygate.ops import upstreams as ops
from keygate.ops.audit import Actor
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream
from keygate.types import Secret
from keygate.upstream_pool import NO_KEYS, Lease, UpstreamPool
from keygate.vault import Keyring

from .helpers import UPSTREAM_SECRET, Gateway, ProcessGateway, assert_no_secret_written

K1 = "sk-proj-POOL-key-one-1111111111111111"
K2 = "sk-proj-POOL-key-two-2222222222222222"
K3 = "sk-proj-POOL-key-three-333333333333333"
MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def pool_gateway(
    tmp_path: Path, url: str, refs: list[str], process: bool = False, **extra: Any
) -> Gateway | ProcessGateway:
    upstream = {"base_url": url, "api_keys": refs, **extra.pop("upstream", {})}
    gw = (ProcessGateway if process else Gateway)(
        tmp_path,
        url,
        extra={"upstreams": {"openai": upstream}, **extra},
        env={"K1": K1, "K2": K2, "K3": K3, "KEYGATE_MASTER_KEY": MASTER},
    )
    gw.secrets += [K1, K2, K3, MASTER]
    return gw


def bearers(mock: MockUpstream) -> list[str]:
    return [r.headers.get("authorization", "")[7:] for r in mock.requests]


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


@pytest.fixture
def two_keys(tmp_path: Path, mock: MockUpstream) -> Iterator[tuple[Gateway, openai.OpenAI]]:
    mock.set_api_keys([K1, K2])
    with pool_gateway(tmp_path, mock.url, ["${K1}", "${K2}"]) as gw:
        yield gw, sdk(gw, gw.create_key()["key"])
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_requests_spread_over_keys(two_keys: tuple[Gateway, openai.OpenAI], mock: MockUpstream) -> None:
    _, client = two_keys
    for _ in range(6):
        client.models.list()
    assert sorted(bearers(mock)) == [K1] * 3 + [K2] * 3


def test_rejected_key_leaves_rotation_with_alert(
    two_keys: tuple[Gateway, openai.OpenAI], mock: MockUpstream
) -> None:
    gw, client = two_keys
    mock.set_api_keys([K2])  # K1 was revoked at the provider
    for _ in range(6):
        assert client.chat.completions.create(**CHAT).choices  # every request succeeds
    sent = bearers(mock)
    assert sent.count(K1) == 1 and sent.count(K2) == 6
    log = gw.stderr_path.read_text()
    assert '"alert": "upstream_key_rejected"' in log.replace('":"', '": "') and "openai#0" in log


def test_429_cools_the_key_down(two_keys: tuple[Gateway, openai.OpenAI], mock: MockUpstream) -> None:
    _, client = two_keys
    mock.fail_next("429", retry_after=120)
    for _ in range(4):
        client.models.list()
    sent = bearers(mock)
    cooled = sent[0]
    assert len(sent) == 5 and cooled not in sent[1:]  # retried at once on the other key, then only it


def test_5xx_and_connection_errors_retry_on_another_key(
    two_keys: tuple[Gateway, openai.OpenAI], mock: MockUpstream
) -> None:
    _, client = two_keys
    for mode in ("500", "503", "disconnect"):
        mock.reset()
        mock.fail_next(mode)
        assert client.chat.completions.create(**CHAT).choices
        first, second = bearers(mock)
        assert first != second


def test_retries_are_bounded(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([K1, K2, K3])
    with pool_gateway(tmp_path, mock.url, ["${K1}", "${K2}", "${K3}"], upstream_retries=1) as gw:
        client = sdk(gw, gw.create_key()["key"])
        mock.fail_next("500", count=3)
        with pytest.raises(openai.InternalServerError) as info:
            client.models.list()
        assert info.value.status_code == 500
        assert len(mock.requests) == 2  # one try and one retry, not three


def test_no_retry_once_a_stream_started(two_keys: tuple[Gateway, openai.OpenAI], mock: MockUpstream) -> None:
    _, client = two_keys
    mock.fail_next("disconnect_mid_stream")
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(**CHAT, stream=True):
            pass
    assert len(mock.requests) == 1
    # Before the stream starts, a failure is retried on the other key.
    mock.reset()
    mock.fail_next("503")
    chunks = list(client.chat.completions.create(**CHAT, stream=True))
    assert chunks and len(mock.requests) == 2


def test_fallback_upstream_when_all_keys_are_out(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([])  # the primary account rejects every key
    with MockUpstream(api_keys=[K3]) as backup:
        config = {
            "upstreams": {
                "openai": {"base_url": mock.url, "api_keys": ["${K1}", "${K2}"], "fallback": "azure"},
                "azure": {"base_url": backup.url, "api_key": "${K3}"},
            },
            "default_upstream": "openai",
        }
        gw = Gateway(tmp_path, mock.url, extra=config, env={"K1": K1, "K2": K2, "K3": K3})
        gw.secrets += [K1, K2, K3]
        with gw:
            client = sdk(gw, gw.create_key()["key"])
            for _ in range(3):
                assert client.chat.completions.create(**CHAT).choices
        assert sorted(bearers(mock)) == [K1, K2]  # each primary key tried once, then left out
        assert bearers(backup) == [K3] * 3
        entry = gw.wait_entry(lambda e: e.get("status") == 200)
        assert entry["upstream"] == "azure"
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_file_secret_reread_on_sighup(tmp_path: Path, mock: MockUpstream) -> None:
    secret_file = tmp_path / "run" / "openai_key"
    secret_file.parent.mkdir()
    secret_file.write_text(K1 + "\n")
    mock.set_api_keys([K1])
    # A long refresh interval: only the signal can make it re-read the file.
    gw = pool_gateway(tmp_path, mock.url, [f"file:{secret_file}"], process=True, key_refresh_interval=3600)
    with gw:
        client = sdk(gw, gw.create_key()["key"])
        client.models.list()
        secret_file.write_text(K2 + "\n")
        mock.set_api_keys([K2])
        assert isinstance(gw, ProcessGateway) and gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded on SIGHUP" not in gw.stderr_path.read_text():
            assert time.monotonic() < deadline, "no reload after SIGHUP"
            time.sleep(0.02)
        client.models.list()
    assert bearers(mock) == [K1, K2]
    assert_no_secret_written(_outputs(gw), gw.secrets)


def test_file_secret_reread_on_change(tmp_path: Path, mock: MockUpstream) -> None:
    secret_file = tmp_path / "run" / "openai_key"
    secret_file.parent.mkdir()
    secret_file.write_text(K1)
    mock.set_api_keys([K1])
    with pool_gateway(tmp_path, mock.url, [f"file:{secret_file}"], key_refresh_interval=0.05) as gw:
        client = sdk(gw, gw.create_key()["key"])
        client.models.list()
        secret_file.write_text(K2 + "\n" + " " * 10)  # another size: seen even within one mtime tick
        os.utime(secret_file)
        mock.set_api_keys([K2])
        deadline = time.monotonic() + 10
        while "upstream keys reloaded" not in gw.stderr_path.read_text():
            assert time.monotonic() < deadline, "the changed file was not re-read"
            time.sleep(0.02)
        client.models.list()
    assert bearers(mock)[-1] == K2
    assert_no_secret_written(_outputs(gw), gw.secrets)


def test_upstream_key_rotation_under_load_has_zero_failures(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([K1])
    gw = pool_gateway(tmp_path, mock.url, [], key_refresh_interval=0.05)
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=K1 + "\n")
    with gw:
        key = gw.create_key()["key"]
        results: list[str] = []
        stop = threading.Event()

        def load() -> None:
            client = sdk(gw, key)
            while not stop.is_set():
                try:
                    client.chat.completions.create(**CHAT)
                    results.append("ok")
                except Exception as exc:
                    results.append(repr(exc))

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            _wait(lambda: len(results) >= 10)
            mock.set_api_keys([K1, K2])  # the provider issued K2; both valid for now
            gw.cli("upstreams", "rotate", "openai", "--key-stdin", "--grace", "1h", input=K2 + "\n")
            _wait(lambda: K2 in bearers(mock)[-5:])
            old = [v for v in _list(gw) if v["status"] == "retiring"]
            assert len(old) == 1
            gw.cli("upstreams", "retire", "openai")  # retire now, before the grace period ends
            mock.set_api_keys([K2])  # and the provider revokes K1
            mark = len(results)
            _wait(lambda: len(results) >= mark + 10)
        finally:
            stop.set()
            for w in workers:
                w.join()
    failures = [r for r in results if r != "ok"]
    assert failures == [] and len(results) >= 20
    statuses = {v["key_id"]: v["status"] for v in _list(gw)}
    assert sorted(statuses.values()) == ["active", "retired"]
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_egress_redirects_are_not_followed(tmp_path: Path) -> None:
    import http.server

    hits: list[str] = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Target)
    target_url = f"http://127.0.0.1:{target.server_address[1]}"

    class Redirector(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("location", target_url + "/steal")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    for server in (target, redirector):
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{redirector.server_address[1]}/v1"
        with Gateway(tmp_path, url) as gw:
            r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {gw.create_key()['key']}"})
        assert r.status_code == 302 and hits == []
    finally:
        for server in (target, redirector):
            server.shutdown()
            server.server_close()


def _outputs(gw: Gateway) -> list[Path]:
    """Everything written but the mounted secret files themselves (run/)."""
    return [p for p in gw.written_files() if p.parent.name != "run"]


def _list(gw: Gateway) -> list[dict[str, Any]]:
    return [v for v in json.loads(gw.cli("upstreams", "list", "--json").stdout) if v["source"] == "store"]


def _wait(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# -- through a real gateway: stored upstreams, strategy, start-up refusals ---------------------------


def test_least_in_flight_avoids_the_busy_key(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([K1, K2])
    gw = pool_gateway(tmp_path, mock.url, ["${K1}", "${K2}"], upstream={"strategy": "least_in_flight"})
    with gw:
        client = sdk(gw, gw.create_key()["key"])
        mock.fail_next("slow", delay=10.0)  # each event of the first stream is held back
        stream = client.chat.completions.create(**CHAT, stream=True)
        try:
            (busy,) = bearers(mock)
            idle = K2 if busy == K1 else K1
            for _ in range(4):
                client.models.list()
            assert bearers(mock)[1:] == [idle] * 4  # round robin would have used the busy key twice
        finally:
            stream.close()
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_swapped_rows_fail_to_decrypt_and_the_gateway_refuses_to_start(
    tmp_path: Path, mock: MockUpstream
) -> None:
    gw = pool_gateway(tmp_path, mock.url, [])
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=K1 + "\n")
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=K2 + "\n")
    db = sqlite3.connect(tmp_path / "keygate.db", isolation_level=None)
    (a, wa, ca), (b, wb, cb) = db.execute(
        "SELECT id, wrapped_key, ciphertext FROM upstream_keys ORDER BY created_at"
    ).fetchall()
    db.execute("UPDATE upstream_keys SET wrapped_key = ?, ciphertext = ? WHERE id = ?", (wb, cb, a))
    db.execute("UPDATE upstream_keys SET wrapped_key = ?, ciphertext = ? WHERE id = ?", (wa, ca, b))
    db.close()
    with pytest.raises(ConfigError, match="does not open"):
        gw.start()
    assert not gw.running
    assert_no_secret_written(_outputs(gw), gw.secrets)


def test_refuses_to_start_with_stored_keys_and_no_master_key(tmp_path: Path, mock: MockUpstream) -> None:
    gw = pool_gateway(tmp_path, mock.url, [])
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=K1 + "\n")
    del gw.env["KEYGATE_MASTER_KEY"]
    with pytest.raises(ConfigError, match="no master key is configured"):
        gw.start()
    assert not gw.running
    assert_no_secret_written(_outputs(gw), gw.secrets)


def _without_config_upstreams(gw: Gateway) -> None:
    config = gw.config
    del config["upstreams"]
    gw.write_config(config)


def test_bug6_stored_upstreams_are_first_class(tmp_path: Path, mock: MockUpstream) -> None:
    """Regression (issue 10, bug 6): the built-in default upstream replaced by a stored one."""
    mock.set_api_keys(["sk-stored-only-key-000000000000"])
    # No upstreams in the config (the built-in default) and no key in the environment.
    gw = Gateway(tmp_path, mock.url, env={"KEYGATE_MASTER_KEY": MASTER, "OPENAI_API_KEY": ""})
    _without_config_upstreams(gw)
    gw.cli(
        "upstreams",
        "add",
        "openai",
        "--base-url",
        mock.url,
        "--key-stdin",
        input="sk-stored-only-key-000000000000\n",
    )
    with gw:
        key = gw.create_key("app")["key"]
        sdk(gw, key).chat.completions.create(**CHAT)
    assert mock.requests[-1].headers["authorization"] == "Bearer sk-stored-only-key-000000000000"


def test_bug6_config_names_only_base_urls(tmp_path: Path, mock: MockUpstream) -> None:
    """Regression (issue 10, bug 6): a config upstream without keys next to a stored default one."""
    mock.set_api_keys(["sk-stored-beta-key-111111111111"])
    extra = {"upstreams": {"alpha": {"base_url": mock.url}}, "default_upstream": "beta"}
    gw = Gateway(tmp_path, mock.url, extra=extra, env={"KEYGATE_MASTER_KEY": MASTER, "OPENAI_API_KEY": ""})
    gw.cli(
        "upstreams",
        "add",
        "beta",
        "--base-url",
        mock.url,
        "--key-stdin",
        input="sk-stored-beta-key-111111111111\n",
    )
    with gw:
        key = gw.create_key("app")["key"]
        sdk(gw, key).chat.completions.create(**CHAT)
    assert mock.requests[-1].headers["authorization"] == "Bearer sk-stored-beta-key-111111111111"
    assert UPSTREAM_SECRET not in json.dumps([r.headers for r in mock.requests])


def test_bug6_serves_with_every_key_pinned_to_a_stored_upstream(tmp_path: Path, mock: MockUpstream) -> None:
    """Regression (issue 10, bug 6): the gateway starts when only a stored upstream has keys."""
    mock.set_api_keys(["sk-stored-gamma-key-22222222222"])
    gw = Gateway(tmp_path, mock.url, env={"KEYGATE_MASTER_KEY": MASTER, "OPENAI_API_KEY": ""})
    _without_config_upstreams(gw)
    gw.cli(
        "upstreams",
        "add",
        "gamma",
        "--base-url",
        mock.url,
        "--key-stdin",
        input="sk-stored-gamma-key-22222222222\n",
    )
    key = gw.create_key("app", "--upstream", "gamma")["key"]
    with gw:
        sdk(gw, key).chat.completions.create(**CHAT)
    assert mock.requests[-1].headers["authorization"] == "Bearer sk-stored-gamma-key-22222222222"


# -- UpstreamPool in process, over a real store ------------------------------------------------------

ACTOR = Actor("test", "local")


def settings_for(tmp_path: Path, upstreams: dict[str, Any] | None = None, **extra: Any) -> Settings:
    config: dict[str, Any] = {"database_url": "sqlite:///keygate.db", **extra}
    if upstreams is not None:
        config["upstreams"] = upstreams
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"K1": K1, "K2": K2, "K3": K3, "KEYGATE_MASTER_KEY": MASTER, "KEYGATE_PEPPER": "p" * 40}
    return load_settings(path, env)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "keygate.db", audit_key=b"t" * 32)
    s.migrate()
    yield s
    s.close()


def pool_of(settings: Settings, store: SQLiteStore) -> UpstreamPool:
    return UpstreamPool(settings, store, ops.keyring_for(settings))


def take(pool: UpstreamPool, name: str = "openai", tried: set[str] | None = None) -> Lease:
    lease = pool.acquire(name, set() if tried is None else tried)
    assert lease is not None
    lease.release()
    return lease


def secrets_of(pool: UpstreamPool, n: int, name: str = "openai") -> list[str]:
    out = []
    for _ in range(n):
        api_key = take(pool, name).upstream.api_key
        assert api_key is not None
        out.append(api_key.reveal())
    return out


def test_config_and_stored_keys_make_one_pool(tmp_path: Path, store: SQLiteStore) -> None:
    settings = settings_for(
        tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": ["${K1}", "${K2}"]}}
    )
    ops.store_key(settings, store, ACTOR, "openai", Secret(K3))
    ops.define(settings, store, ACTOR, "beta", base_url="https://beta.example/v1", fallback="openai")
    beta_key = ops.store_key(settings, store, ACTOR, "beta", Secret("sk-beta-key-00000000"))["key_id"]
    pool = pool_of(settings, store)
    assert pool.names() == ["beta", "openai"]
    assert (pool.key_count("openai"), pool.key_count("beta"), pool.key_count("nope")) == (3, 1, 0)
    default = pool.upstream_for(None)
    assert default is not None and default.name == "openai" and default.source == "config"
    beta = pool.upstream_for("beta")
    assert beta is not None and (beta.source, beta.base_url, beta.fallback) == (
        "store",
        "https://beta.example/v1",
        "openai",
    )
    assert pool.upstream_for("nope") is None
    assert sorted(secrets_of(pool, 6)) == sorted([K1, K2, K3] * 2)  # round robin over all three
    lease = take(pool, "beta")
    assert (lease.key.id, lease.key.source, lease.upstream.base_url) == (
        beta_key,
        "store",
        "https://beta.example/v1",
    )


def test_tried_keys_are_skipped_and_retries_are_bounded(tmp_path: Path, store: SQLiteStore) -> None:
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": ["${K1}", "${K2}", "${K3}"]}},
                            upstream_retries=1)  # fmt: skip
    pool = pool_of(settings, store)
    assert pool.max_attempts == 2
    tried: set[str] = set()
    first = pool.acquire("openai", tried)
    assert first is not None and first.key.in_flight == 1 and tried == {first.key.id}
    first.release()
    assert first.key.in_flight == 0
    assert pool.can_retry("openai", tried)
    second = take(pool, tried=tried)
    assert second.key.id != first.key.id and len(tried) == 2
    assert not pool.can_retry("openai", tried)  # two attempts: the budget of one retry is spent
    take(pool, tried=tried)
    assert pool.acquire("openai", tried) is None  # every key tried
    assert pool.acquire("nope", set()) is None


def test_a_rejected_key_leaves_the_rotation_until_it_works_or_is_enabled(
    tmp_path: Path, store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(
        tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": ["${K1}", "${K2}"]}}
    )
    pool = pool_of(settings, store)
    lease = take(pool)
    with caplog.at_level(logging.WARNING):
        lease.rejected(401)
    (alert,) = [r for r in caplog.records if getattr(r, "alert", None) == "upstream_key_rejected"]
    assert (alert.upstream_key, alert.upstream_status, alert.severity) == (lease.key.id, 401, "high")  # type: ignore[attr-defined]
    other = {K1: K2, K2: K1}[lease.key.secret.reveal()]
    assert secrets_of(pool, 4) == [other] * 4
    # Alone, it is still tried as a last resort: its upstream's own answer is better than none.
    healthy = take(pool)
    assert take(pool, tried={healthy.key.id}).key is lease.key
    # An operator's `upstreams enable` reaches the running pool on its next refresh.
    pool.refresh()
    assert lease.key.disabled
    ops.enable(settings, store, ACTOR, "openai", lease.key.id)
    with caplog.at_level(logging.INFO):
        pool.refresh()
    assert any(r.getMessage() == "upstream keys reloaded" for r in caplog.records)
    assert sorted(secrets_of(pool, 4)) == [K1, K1, K2, K2]
    # A success re-enables a key as well.
    again = take(pool)
    again.rejected(403)
    again.ok()
    assert not again.key.disabled


def test_a_forbidden_request_leaves_the_key_as_it_was(
    tmp_path: Path, store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(
        tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": ["${K1}", "${K2}"]}}
    )
    pool = pool_of(settings, store)
    lease = take(pool)
    with caplog.at_level(logging.WARNING):
        lease.forbidden("model_not_found")
    (line,) = caplog.records
    assert (line.upstream_key, line.upstream_code) == (lease.key.id, "model_not_found")  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if getattr(r, "alert", None)]
    assert not lease.key.disabled and lease.key.cool_until == 0.0
    assert sorted(secrets_of(pool, 4)) == [K1, K1, K2, K2]


def test_429_cools_a_key_down_and_makes_the_error_a_429(tmp_path: Path, store: SQLiteStore) -> None:
    settings = settings_for(
        tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": ["${K1}", "${K2}"]}}
    )
    pool = pool_of(settings, store)
    first, second = take(pool), take(pool)
    first.cooldown("120")
    assert secrets_of(pool, 3) == [second.key.secret.reveal()] * 3
    second.cooldown("not-a-number")  # 1 second
    err = pool.unavailable("openai")
    assert isinstance(err, RateLimited) and err.status == 429
    assert 0 < second.key.cool_until - time.monotonic() <= 1.0
    for given, longest in (("0", 0.1), (None, 1.0), ("99999", 300.0), ("-5", 0.1)):
        first.cooldown(given)
        assert longest - 0.05 <= first.key.cool_until - time.monotonic() <= longest
    for lease in (first, second):
        lease.key.cool_until = 0.0
        lease.rejected(401)
    err = pool.unavailable("openai")  # disabled, not cooling: unavailable
    assert err is NO_KEYS and isinstance(err, UpstreamUnavailable) and err.__traceback__ is None
    assert pool.unavailable("nope") is NO_KEYS


def test_fallbacks_are_followed_and_a_loop_ends(tmp_path: Path, store: SQLiteStore) -> None:
    settings = settings_for(tmp_path, {
        "a": {"base_url": "https://a.example/v1", "api_keys": [], "fallback": "b"},
        "b": {"base_url": "https://b.example/v1", "api_key": "${K1}", "fallback": "c"},
        "c": {"base_url": "https://c.example/v1", "api_key": "${K2}", "fallback": "a"},
    })  # fmt: skip
    pool = pool_of(settings, store)
    assert take(pool, "a").upstream.name == "b"
    tried: set[str] = set()
    take(pool, "a", tried)
    assert take(pool, "a", tried).upstream.name == "c"
    assert pool.acquire("a", tried) is None  # a -> b -> c -> a: every key tried, the walk ends
    take(pool, "b").rejected(401)
    assert take(pool, "a").upstream.name == "c"  # the rejected key is skipped on the way


def test_least_in_flight_in_process(tmp_path: Path, store: SQLiteStore) -> None:
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": ["${K1}", "${K2}"],
                                                  "strategy": "least_in_flight"}})  # fmt: skip
    pool = pool_of(settings, store)
    busy = pool.acquire("openai", set())
    assert busy is not None
    for _ in range(4):  # while one key has a request in flight, every other request goes to the other
        lease = pool.acquire("openai", set())
        assert lease is not None and lease.key is not busy.key and lease.key.in_flight == 1
        lease.release()
    busy.release()
    assert sorted(secrets_of(pool, 4)) == [K1, K1, K2, K2]


def test_retiring_keys_are_a_last_resort_and_never_used_after_their_grace(
    tmp_path: Path, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": []}})
    old = ops.store_key(settings, store, ACTOR, "openai", Secret(K1))["key_id"]
    ops.store_key(settings, store, ACTOR, "openai", Secret(K2), grace=3600.0)
    pool = pool_of(settings, store)
    assert secrets_of(pool, 3) == [K2] * 3  # the active key while it is healthy
    take(pool).rejected(401)
    lease = take(pool)
    assert (lease.key.id, lease.key.state) == (old, "retiring")  # the retiring one before a rejected one
    later = time.time() + 3601
    monkeypatch.setattr(
        upstream_pool, "time", types.SimpleNamespace(time=lambda: later, monotonic=time.monotonic)
    )
    assert take(pool).key.secret.reveal() == K2  # past its grace, the old key is never used again
    pool.reload()
    assert pool.key_count("openai") == 1


def test_stored_keys_are_used_and_touched_and_kept_across_reloads(tmp_path: Path, store: SQLiteStore) -> None:
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_key": "${K1}"}})
    stored_id = ops.store_key(settings, store, ACTOR, "openai", Secret(K2))["key_id"]
    pool = pool_of(settings, store)
    config_lease, stored_lease = take(pool), take(pool)
    if config_lease.key.source == "store":
        config_lease, stored_lease = stored_lease, config_lease
    config_lease.ok()
    stored_lease.ok()
    assert set(pool.used) == {stored_id}  # only stored keys have a last-used time in the store
    config_lease.rejected(401)
    assert not pool.changed()
    pool.refresh()
    (row,) = store.list_upstream_keys()
    assert row.last_used_at is not None and pool.used == {}
    ops.store_key(settings, store, ACTOR, "openai", Secret(K3))
    assert pool.changed()
    pool.refresh()
    assert pool.key_count("openai") == 3
    kept = [k for k in pool._entries["openai"].keys if k.id == config_lease.key.id]
    assert kept[0].disabled  # runtime state survives a reload


def test_stored_keys_need_the_right_master_key(
    tmp_path: Path, store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_key": "${K1}"}})
    ops.store_key(settings, store, ACTOR, "openai", Secret(K2))
    with pytest.raises(ConfigError, match="no master key is configured"):
        UpstreamPool(settings, store, None)
    with pytest.raises(
        ConfigError, match=r"^master key: upstream key uk_\w+ is wrapped by master key mk_\w+, which is not"
    ):
        UpstreamPool(settings, store, Keyring(b"w" * 32))
    pool = pool_of(settings, store)
    assert pool.key_count("openai") == 2
    # Swap the stored row's material with another row's: strict start-up refuses it, a running pool
    # logs it and goes on with the keys it can open.
    ops.store_key(settings, store, ACTOR, "openai", Secret(K3))
    db = sqlite3.connect(store.path, isolation_level=None)
    (a, wa, ca), (b, wb, cb) = db.execute(
        "SELECT id, wrapped_key, ciphertext FROM upstream_keys ORDER BY created_at"
    ).fetchall()
    db.execute("UPDATE upstream_keys SET wrapped_key = ?, ciphertext = ? WHERE id = ?", (wb, cb, a))
    db.execute("UPDATE upstream_keys SET wrapped_key = ?, ciphertext = ? WHERE id = ?", (wa, ca, b))
    db.close()
    with pytest.raises(ConfigError, match=r"^master key: upstream key \w+ does not open"):
        UpstreamPool(settings, store, ops.keyring_for(settings))
    running = pool  # opened before the swap: the first key is cached, the new one cannot open
    with caplog.at_level(logging.ERROR):
        running.refresh()
    assert any(r.getMessage() == "cannot open a stored upstream key" for r in caplog.records)
    assert running.key_count("openai") == 2  # the config key and the cached one


def test_file_keys_are_reread_when_they_change(
    tmp_path: Path, store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    secret, later = tmp_path / "run" / "key", tmp_path / "run" / "later"
    secret.parent.mkdir()
    secret.write_text(K1 + "\n")
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1",
                                                  "api_keys": [f"file:{secret}", f"file:{later}"]}})  # fmt: skip
    later.mkdir()  # unreadable as a file once the gateway runs
    with caplog.at_level(logging.ERROR):
        pool = pool_of(settings, store)
    assert pool.key_count("openai") == 1 and secrets_of(pool, 1) == [K1]
    assert any(r.getMessage() == "cannot read an upstream key file" for r in caplog.records)
    assert not pool.changed()
    secret.write_text(K2 + "\n  ")  # another size: a change even within one mtime tick
    assert pool.changed()
    pool.refresh()
    assert secrets_of(pool, 2) == [K2, K2]
    later.rmdir()
    later.write_text(K3)
    pool.refresh_now()  # SIGHUP: re-read every file now
    assert sorted(secrets_of(pool, 2)) == sorted([K2, K3])
    secret.unlink()  # a secret taken away is a change too
    assert pool.changed()
    pool.refresh()
    assert secrets_of(pool, 2) == [K3, K3]


def test_refresh_failures_are_logged_never_raised(
    tmp_path: Path, store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_key": "${K1}"}})
    pool = pool_of(settings, store)
    db = sqlite3.connect(store.path)
    db.execute("DROP TABLE upstream_defs")
    db.execute("UPDATE meta SET v = 'moved' WHERE k = 'upstreams_rev'")
    db.commit()
    db.close()
    with caplog.at_level(logging.ERROR):
        pool.refresh()
        pool.refresh_now()
    messages = [r.getMessage() for r in caplog.records]
    assert "upstream key refresh failed" in messages and "upstream key reload failed" in messages
    assert secrets_of(pool, 1) == [K1]  # the pool it had goes on serving


def test_the_background_task_reloads_and_flushes_last_use(tmp_path: Path, store: SQLiteStore) -> None:
    settings = settings_for(tmp_path, {"openai": {"base_url": "https://api.example/v1", "api_keys": []}},
                            key_refresh_interval=0.02)  # fmt: skip
    ops.store_key(settings, store, ACTOR, "openai", Secret(K1))
    pool = pool_of(settings, store)

    async def run() -> None:
        await pool.start()
        ops.store_key(settings, store, ACTOR, "openai", Secret(K2))
        deadline = time.monotonic() + 5
        while pool.key_count("openai") < 2:
            assert time.monotonic() < deadline, "the pool did not reload"
            await asyncio.sleep(0.01)
        take(pool).ok()
        await pool.stop()

    asyncio.run(run())
    assert any(r.last_used_at is not None for r in store.list_upstream_keys())
