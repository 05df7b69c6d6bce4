"""keygate.testing.gateway: LocalGateway (a real keygate in a background thread, the CLI in process)
and serving() (the same server in the caller's event loop), used as an app's tests would use them."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keygate.config import Address, load_settings
from keygate.errors import ConfigError
from keygate.testing import CliResult, LocalGateway, MockUpstream, Running, free_ports, serving
from keygate.testing import gateway as gateway_module

from ..helpers import UPSTREAM_SECRET

MASTER = base64.urlsafe_b64encode(bytes(range(32))).decode()


def local(tmp_path: Path, upstream: MockUpstream, **kw: Any) -> LocalGateway:
    return LocalGateway(tmp_path, upstream.url, upstream_key=UPSTREAM_SECRET, **kw)


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


def settle(gw: LocalGateway) -> LocalGateway:
    """Wait until both listeners accept connections. start() should already guarantee it, and does
    not (see test_start_returns_only_once_both_listeners_accept): tests that are about something
    else wait here rather than fail on that bug."""
    deadline = time.monotonic() + 5
    while refused(gw.host, gw.port) or refused(gw.host, gw.admin_port):
        assert time.monotonic() < deadline, "the gateway never started listening"
        time.sleep(0.005)
    return gw


@contextlib.contextmanager
def occupied(port: int) -> Iterator[None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield


# --- LocalGateway: the server ---------------------------------------------------------------------


def test_start_serve_and_stop(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    gw = local(tmp_path, upstream)
    assert not gw.running and gw.stop() == 0  # stopping what never ran is fine
    assert (gw.url, gw.admin_url, gw.base) == (
        f"http://127.0.0.1:{gw.port}/v1",
        f"http://127.0.0.1:{gw.admin_port}",
        f"http://127.0.0.1:{gw.port}",
    )
    with gw:
        settle(gw)
        assert gw.running
        with pytest.raises(RuntimeError, match="running already"):
            gw.start()
        key = gw.create_key("app")["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        assert client.models.list().data
        assert httpx.get(f"{gw.admin_url}/healthz").status_code == 200
        assert mock.requests[0].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert not gw.running and gw.stop() == 0
    assert refused("127.0.0.1", gw.port) and refused("127.0.0.1", gw.admin_port)
    # Stopping flushed the record; the operator log went to stderr.log as JSON lines.
    assert [e["status"] for e in gw.access_entries(timeout=0)] == [200]
    events = [e["event"] for e in gw.log_entries()]
    assert "keygate listening" in events and events[-1] == "keygate stopped"
    # It starts again, on the same ports, with the same database.
    with gw:
        settle(gw)
        assert openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0).models.list().data


def test_start_returns_only_once_both_listeners_accept(tmp_path: Path, upstream: MockUpstream) -> None:
    """start() "returns once both listeners are up": a client may connect the moment it returns."""
    gw = local(tmp_path, upstream)
    not_listening = 0
    for _ in range(50):  # a race: each start may or may not lose it, so try a few times
        with gw:
            not_listening += refused(gw.host, gw.port) or refused(gw.host, gw.admin_port)
    assert not_listening == 0, f"{not_listening} of 50 starts returned before both listeners accepted"


def test_a_config_error_is_raised_in_the_caller(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = local(tmp_path, upstream)
    gw.write_config({**gw.config, "listen": "nowhere"})
    with pytest.raises(ConfigError, match=r"^listen: expected HOST:PORT"):
        gw.start()
    assert not gw.running


def test_a_start_up_failure_in_the_server_is_raised_in_the_caller(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    gw = local(tmp_path, upstream, env={"OPENAI_API_KEY": ""})
    with pytest.raises(ConfigError, match="no upstream has a key"):
        gw.start()
    assert not gw.running
    gw.env["OPENAI_API_KEY"] = UPSTREAM_SECRET
    with gw:
        assert gw.running


def test_a_public_port_in_use_is_raised_by_start(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = local(tmp_path, upstream)
    with occupied(gw.port), pytest.raises(ConfigError, match="could not listen"):
        gw.start()
    assert not gw.running
    with gw:  # and once the port is free, it starts
        settle(gw)


def test_an_admin_port_in_use_is_raised_by_start(tmp_path: Path, upstream: MockUpstream) -> None:
    """start() "returns once both listeners are up (or raises why not)"."""
    gw = local(tmp_path, upstream)
    try:
        with occupied(gw.admin_port), pytest.raises(ConfigError, match="could not listen"):
            gw.start()
        assert not gw.running
    finally:
        with contextlib.suppress(RuntimeError):
            gw.stop()


def test_config_env_and_files(
    tmp_path: Path, upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYGATE_CONFIG", "/elsewhere/keygate.yaml")
    monkeypatch.setenv("KEYGATE_PEPPER", "p" * 40)
    gw = local(tmp_path, upstream, extra={"max_body_bytes": 1234}, env={"EXTRA": "1"})
    # The caller's own keygate settings never leak in; what `env` gives is there.
    assert "KEYGATE_CONFIG" not in gw.env and "KEYGATE_PEPPER" not in gw.env
    assert (gw.env["EXTRA"], gw.env["OPENAI_API_KEY"]) == ("1", UPSTREAM_SECRET)
    assert gw.config["max_body_bytes"] == 1234
    assert gw.config["upstreams"]["openai"] == {"base_url": upstream.url, "api_key": "${OPENAI_API_KEY}"}
    settings = gw.settings()
    assert (settings.listen, settings.admin_listen) == (
        Address("127.0.0.1", gw.port),
        Address("127.0.0.1", gw.admin_port),
    )
    assert settings.database_path == tmp_path / "keygate.db" and settings.max_body_bytes == 1234
    gw.write_config({**gw.config, "max_body_bytes": 99})
    assert gw.settings().max_body_bytes == 99
    assert gw.log_entries() == [] and gw.access_entries(timeout=0) == []
    with gw:
        gw.create_key()
    names = {p.name for p in gw.written_files()}
    assert {"keygate.yaml", "keygate.db", "keygate.pepper", "stderr.log"} <= names


def test_wait_entry_finds_the_newest_match_or_says_so(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    with local(tmp_path, upstream) as gw:
        settle(gw)
        key = gw.create_key()["key"]
        for _ in range(2):
            httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"})
        last = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"})
        rid = last.headers["x-keygate-request-id"]
        assert len(gw.access_entries(at_least=3)) == 3
        assert gw.wait_entry(lambda e: e["route"] == "models")["request_id"] == rid
        with pytest.raises(AssertionError, match="no matching access-log entry"):
            gw.wait_entry(lambda e: e["status"] == 418, timeout=0.1)


# --- LocalGateway: the CLI, in process ------------------------------------------------------------


def test_cli_results_and_usage_errors(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = local(tmp_path, upstream)  # the CLI works on the database; no server needed
    created = gw.create_key("app")
    assert created["key"].startswith("kg_") and created["name"] == "app"
    listed = gw.cli("keys", "list", "--json")
    assert isinstance(listed, CliResult)
    assert (listed.args, listed.returncode, listed.stderr) == (("keys", "list", "--json"), 0, "")
    assert [k["id"] for k in json.loads(listed.stdout)] == [created["id"]]
    assert created["key"] not in listed.stdout
    usage = gw.cli("keys", "frobnicate", check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr and usage.stdout == ""
    helped = gw.cli("keys", "--help")
    assert helped.returncode == 0 and "usage:" in helped.stdout
    failed = gw.cli("keys", "revoke", "key_nonexistent", check=False)
    assert failed.returncode != 0 and failed.stderr
    with pytest.raises(AssertionError, match="keygate keys revoke key_nonexistent failed"):
        gw.cli("keys", "revoke", "key_nonexistent")


def test_cli_reads_stdin_and_restores_it(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = local(tmp_path, upstream, env={"KEYGATE_MASTER_KEY": MASTER})
    stdin = sys.stdin
    secret = "sk-proj-STDIN-key-0123456789abcdefWXYZ"
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=secret + "\n")
    assert sys.stdin is stdin
    (row,) = [r for r in json.loads(gw.cli("upstreams", "list", "--json").stdout) if r.get("last4") == "WXYZ"]
    assert row["upstream"] == "openai"
    # Nothing on stdin: the command says so instead of waiting for a terminal.
    empty = gw.cli("upstreams", "add", "openai", "--key-stdin", check=False)
    assert empty.returncode != 0 and "no upstream API key given" in empty.stderr
    # stdin is never a terminal here, so a command that would prompt says what to do instead.
    prompt = gw.cli("upstreams", "add", "openai", input=secret + "\n", check=False)
    assert prompt.returncode != 0 and "--key-stdin" in prompt.stderr


def test_an_unexpected_exception_in_a_command_is_exit_1_with_its_traceback(
    tmp_path: Path, upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(argv: list[str], env: dict[str, str]) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway_module, "cli_main", broken)
    result = local(tmp_path, upstream).cli("keys", "list", check=False)
    assert result.returncode == 1 and "RuntimeError: boom" in result.stderr


# --- serving(): the same server in the caller's event loop ----------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_serving_in_an_async_test(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    gw = local(tmp_path, upstream)  # its config, database and CLI; serving() runs the server
    secret = gw.create_key("async")["key"]
    settings = gw.settings()
    async with serving(settings) as running:
        assert isinstance(running, Running)
        assert (running.url, running.admin_url) == (gw.url, gw.admin_url)
        client = openai.AsyncOpenAI(base_url=running.url, api_key=secret, max_retries=0)
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "Hello from mock"
        parts = [
            c.choices[0].delta.content or ""
            async for c in await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            if c.choices
        ]
        assert "".join(parts) == "Hello from mock"
        await client.close()
    assert refused("127.0.0.1", gw.port)
    # The block's end drained and flushed: both requests are in the database.
    rows = sqlite3.connect(tmp_path / "keygate.db").execute("SELECT status, stream FROM usage").fetchall()
    assert sorted(rows) == [(200, 0), (200, 1)]


@pytest.mark.anyio
async def test_serving_raises_a_start_up_failure(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = local(tmp_path, upstream, env={"OPENAI_API_KEY": ""})
    with pytest.raises(ConfigError, match="no upstream has a key"):
        async with serving(gw.settings()):
            raise AssertionError("never ready")
    gw.env["OPENAI_API_KEY"] = UPSTREAM_SECRET
    with occupied(gw.port), pytest.raises(ConfigError, match="could not listen"):
        async with serving(gw.settings()):
            raise AssertionError("never ready")
    async with serving(gw.settings()) as running, httpx.AsyncClient() as http:  # the port is free again
        assert (await http.get(f"{running.url}/models")).status_code == 401


@pytest.mark.anyio
async def test_serving_raises_an_admin_port_in_use_on_entry(tmp_path: Path, upstream: MockUpstream) -> None:
    """The block must not run against a gateway that could not start both listeners."""
    gw = local(tmp_path, upstream)
    entered = False
    with occupied(gw.admin_port), pytest.raises(ConfigError, match="could not listen"):
        async with serving(gw.settings()):
            entered = True
    assert not entered, "serving() yielded although the admin listener could not bind"


def test_running_urls_and_free_ports() -> None:
    settings = load_settings(None, {"OPENAI_API_KEY": "sk-x"})
    v6 = dataclasses.replace(settings, listen=Address("::1", 7000), admin_listen=Address("::1", 7001))
    assert (Running(v6).url, Running(v6).admin_url) == ("http://[::1]:7000/v1", "http://[::1]:7001")
    ports = free_ports(count=5)
    assert len(set(ports)) == 5 and all(0 < p < 65536 for p in ports)
    (port,) = free_ports()
    assert refused("127.0.0.1", port)  # nothing listens there
