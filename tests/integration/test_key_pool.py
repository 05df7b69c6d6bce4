"""Several keys per upstream: spreading, rejection, cool-down, bounded retries, fallback, reloads."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import Gateway, ProcessGateway, assert_no_secret_written

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
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{redirector.server_address[1]}/v1"
        with Gateway(tmp_path, url) as gw:
            r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {gw.create_key()['key']}"})
        assert r.status_code == 302 and hits == []
    finally:
        for server in (target, redirector):
            server.shutdown()
            server.server_close()


def test_stored_upstream_base_url_must_be_https(tmp_path: Path, mock: MockUpstream) -> None:
    gw = pool_gateway(tmp_path, mock.url, ["${K1}"])
    bad = gw.cli(
        "upstreams", "add", "remote", "--base-url", "http://api.example.com/v1", "--key-stdin",
        input=K2 + "\n", check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "https is required" in bad.stderr
    ok = gw.cli(
        "upstreams", "add", "remote", "--base-url", "https://api.example.com/v1", "--key-stdin",
        input=K2 + "\n",
    )  # fmt: skip
    assert "Stored key" in ok.stdout
    assert_no_secret_written(gw.written_files(), gw.secrets)


def _outputs(gw: Gateway) -> list[Path]:
    """Everything written but the mounted secret files themselves (run/)."""
    return [p for p in gw.written_files() if p.parent.name != "run"]


def _list(gw: Gateway) -> list[dict[str, Any]]:
    import json

    return [v for v in json.loads(gw.cli("upstreams", "list", "--json").stdout) if v["source"] == "store"]


def _wait(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
