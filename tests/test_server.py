"""keygate.server: what it refuses to start with (check_ready_to_serve, an address another gateway
serves), and a shutdown that loses no record, in process and as a real ``keygate serve`` process
stopped with SIGTERM."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from keygate.config import Settings, load_settings
from keygate.errors import ConfigError
from keygate.server import check_ready_to_serve
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream
from keygate.upstream_pool import UpstreamPool

from .helpers import UPSTREAM_SECRET, Gateway, ProcessGateway, assert_no_secret_written, process_cli

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MASTER = base64.urlsafe_b64encode(bytes(range(32))).decode()


def settings(
    tmp_path: Path, upstreams: dict[str, Any], env: dict[str, str] | None = None, **extra: Any
) -> Settings:
    cfg = tmp_path / "keygate.yaml"
    cfg.write_text(yaml.safe_dump({"database_url": "sqlite:///kg.db", "upstreams": upstreams, **extra}))
    return load_settings(cfg, {"KEYGATE_PEPPER": "p" * 40, **(env or {})})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "kg.db", audit_key=b"t" * 32)
    s.migrate()
    yield s
    s.close()


def check(s: Settings, store: SQLiteStore) -> None:
    check_ready_to_serve(s, UpstreamPool(s, store, None))


# --- check_ready_to_serve -------------------------------------------------------------------------


def test_no_key_anywhere_is_refused_with_what_to_do(tmp_path: Path, store: SQLiteStore) -> None:
    s = settings(
        tmp_path, {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY}"}}
    )
    with pytest.raises(ConfigError) as info:
        check(s, store)
    assert info.value.message == (
        "upstreams: no upstream has a key (set ${OPENAI_API_KEY} in the environment, or store one "
        "with `keygate upstreams add NAME --key-stdin`)"
    )


def test_no_key_and_no_reference_names_only_the_store(tmp_path: Path, store: SQLiteStore) -> None:
    s = settings(tmp_path, {"openai": {"base_url": "https://api.openai.com/v1"}})
    with pytest.raises(ConfigError) as info:
        check(s, store)
    assert info.value.message == (
        "upstreams: no upstream has a key (store one with `keygate upstreams add NAME --key-stdin`)"
    )


def test_an_unknown_default_upstream_is_refused(tmp_path: Path, store: SQLiteStore) -> None:
    ups = {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "${K}"}}
    s = settings(tmp_path, ups, {"K": "sk-x"}, default_upstream="azure")
    assert s.default_upstream == "azure"  # loading accepts it: a stored upstream may have that name
    with pytest.raises(ConfigError) as info:
        check(s, store)
    assert info.value.message == (
        "default_upstream: 'azure' is neither in the config file nor stored (known: openai)"
    )


def test_a_fallback_naming_nothing_is_refused(tmp_path: Path, store: SQLiteStore) -> None:
    ups = {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "${K}", "fallback": "ghost"}}
    s = settings(tmp_path, ups, {"K": "sk-x"})
    with pytest.raises(ConfigError) as info:
        check(s, store)
    assert info.value.message == "upstreams.openai.fallback: 'ghost' is not another upstream"


def test_a_keyless_upstream_beside_a_keyed_one_is_a_warning(
    tmp_path: Path, store: SQLiteStore, records: list[logging.LogRecord]
) -> None:
    ups = {
        "openai": {"base_url": "https://api.openai.com/v1", "api_key": "${K}", "fallback": "spare"},
        "spare": {"base_url": "https://spare.example/v1", "api_key": "${UNSET}"},
    }
    s = settings(tmp_path, ups, {"K": "sk-x"})
    check(s, store)
    warned = [r for r in records if "has no key yet" in r.getMessage()]
    assert [getattr(r, "upstream", None) for r in warned] == ["spare"]


# --- through a real server ------------------------------------------------------------------------


def test_start_up_refusals_are_raised_in_the_caller(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url, env={"OPENAI_API_KEY": ""})
    with pytest.raises(ConfigError, match=r"no upstream has a key \(set \$\{OPENAI_API_KEY\}"):
        gw.start()
    assert not gw.running
    gw.write_config({**gw.config, "default_upstream": "nowhere"})
    gw.env["OPENAI_API_KEY"] = UPSTREAM_SECRET
    with pytest.raises(ConfigError, match="default_upstream: 'nowhere'"):
        gw.start()
    assert not gw.running


def test_keygate_serve_refuses_to_start_and_says_why(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url, env={"OPENAI_API_KEY": ""})
    gw.env.pop("OPENAI_API_KEY")
    result = process_cli(gw, "serve")
    assert result.returncode != 0
    assert "no upstream has a key" in result.stderr and "${OPENAI_API_KEY}" in result.stderr
    assert "keygate listening" not in result.stderr


def test_starting_with_only_stored_keys_works(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    extra = {"upstreams": {"openai": {"base_url": upstream.url}}}  # no api_key in the config
    gw = Gateway(tmp_path, upstream.url, extra=extra, env={"KEYGATE_MASTER_KEY": MASTER})
    gw.env.pop("OPENAI_API_KEY")
    gw.secrets.append(MASTER)
    gw.cli("upstreams", "add", "openai", "--key-stdin", input=UPSTREAM_SECRET + "\n")
    with gw:
        key = gw.create_key()["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        assert client.models.list().data
    assert mock.requests[0].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    listening = [e for e in gw.log_entries() if e["event"] == "keygate listening"]
    assert listening and listening[0]["upstreams"] == ["openai"]
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_requests_to_a_keyless_upstream_get_503(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    extra = {
        "upstreams": {
            "openai": {"base_url": upstream.url, "api_key": "${OPENAI_API_KEY}"},
            "spare": {"base_url": upstream.url, "api_key": "${SPARE_KEY}"},
        }
    }
    with Gateway(tmp_path, upstream.url, extra=extra) as gw:
        key = gw.create_key("pinned", "--upstream", "spare")["key"]
        r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
        assert mock.requests == []
        warned = [e for e in gw.log_entries() if "has no key yet" in e["event"]]
        assert [e["upstream"] for e in warned] == ["spare"]


# --- one gateway per address ----------------------------------------------------------------------

IN_USE = "the address is in use (is another keygate, or another program, serving it?)"


def test_a_second_gateway_on_a_served_address_is_refused(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    """Two gateways on one address would split its connections, each enforcing the full limits."""
    with Gateway(tmp_path / "first", upstream.url) as first:
        key = first.create_key("limited", "--rpm", "3")["key"]
        second = Gateway(tmp_path / "second", upstream.url)
        second.write_config({**second.config, "listen": first.config["listen"]})
        with pytest.raises(ConfigError) as info:
            second.start()
        assert info.value.message == f"listen: could not listen on 127.0.0.1:{first.port}: {IN_USE}"
        assert not second.running
        second.write_config(
            {
                **second.config,
                "listen": f"127.0.0.1:{second.port}",
                "admin_listen": first.config["admin_listen"],
            }
        )
        with pytest.raises(ConfigError) as info:
            second.start()
        assert (
            info.value.message == f"admin_listen: could not listen on 127.0.0.1:{first.admin_port}: {IN_USE}"
        )
        assert not second.running
        # Every connection still reaches the one gateway, and its limit holds for all of them.
        codes = [
            httpx.get(f"{first.url}/models", headers={"Authorization": f"Bearer {key}"}).status_code
            for _ in range(6)
        ]
        assert codes == [200] * 3 + [429] * 3
        assert httpx.get(f"{first.admin_url}/healthz").status_code == 200


def test_two_gateways_starting_at_once_on_one_address_one_wins(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    first = Gateway(tmp_path / "a", upstream.url)
    second = Gateway(tmp_path / "b", upstream.url)
    second.write_config(
        {**second.config, "listen": first.config["listen"], "admin_listen": first.config["admin_listen"]}
    )
    outcomes: dict[str, BaseException | None] = {}

    def start(name: str, gw: Gateway) -> None:
        try:
            gw.start()
            outcomes[name] = None
        except BaseException as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=start, args=item) for item in (("a", first), ("b", second))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        started = [name for name, failure in outcomes.items() if failure is None]
        refused = [failure for failure in outcomes.values() if failure is not None]
        assert len(started) == 1 and len(refused) == 1, outcomes
        assert isinstance(refused[0], ConfigError) and IN_USE in refused[0].message
    finally:
        first.stop()
        second.stop()


def test_keygate_serve_on_a_served_address_exits_and_says_why(tmp_path: Path, upstream: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url) as gw:
        started = time.monotonic()
        result = process_cli(gw, "serve")
        assert result.returncode == 2
        assert (
            f"configuration error: listen: could not listen on 127.0.0.1:{gw.port}: {IN_USE}" in result.stderr
        )
        assert "keygate listening" not in result.stderr
        assert time.monotonic() - started < 30


# --- shutdown -------------------------------------------------------------------------------------


def _stream_in_background(url: str, key: str, got: dict[str, bytes]) -> threading.Thread:
    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{url}/chat/completions",
            json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ) as r:
            got["body"] = r.read()

    t = threading.Thread(target=stream)
    t.start()
    return t


def _wait_for_request(mock: MockUpstream) -> None:
    deadline = time.monotonic() + 5
    while not mock.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mock.requests


def test_clean_shutdown_drains_streams_and_loses_no_record(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    gw = Gateway(tmp_path, upstream.url, extra={"usage_flush_interval": 30}).start()
    key = gw.create_key()["key"]
    mock.fail_next("slow", delay=0.1)
    got: dict[str, bytes] = {}
    t = _stream_in_background(gw.url, key, got)
    _wait_for_request(mock)
    assert gw.stop() == 0  # stop while the stream is in flight
    t.join()
    assert got["body"].endswith(b"data: [DONE]\n\n")
    # The flush interval is far away: the rows are there because shutdown flushed them.
    rows = (
        sqlite3.connect(tmp_path / "keygate.db")
        .execute("SELECT status, completion_tokens FROM usage")
        .fetchall()
    )
    assert rows == [(200, 3)]
    assert [e["status"] for e in gw.access_entries(timeout=0)] == [200]
    assert gw.log_entries()[-1]["event"] == "keygate stopped"


def test_sigterm_drains_flushes_and_exits_cleanly(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    gw = ProcessGateway(tmp_path, upstream.url, extra={"usage_flush_interval": 30}).start()
    try:
        key = gw.create_key()["key"]
        for _ in range(3):
            assert (
                httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
            )
        mock.reset()
        mock.fail_next("slow", delay=0.1)
        got: dict[str, bytes] = {}
        t = _stream_in_background(gw.url, key, got)
        _wait_for_request(mock)
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGTERM)
        assert gw.proc.wait(15) == 0
        gw.proc = None
        t.join()
    finally:
        gw.stop()
    assert got["body"].endswith(b"data: [DONE]\n\n")
    rows = sqlite3.connect(tmp_path / "keygate.db").execute("SELECT route, status FROM usage").fetchall()
    assert sorted(rows) == [("chat.completions", 200)] + [("models", 200)] * 3
    assert len(gw.access_entries(timeout=0)) == 4
    stderr = [json.loads(line) for line in gw.stderr_path.read_text().splitlines() if line.startswith("{")]
    assert stderr[-1]["event"] == "keygate stopped"
    assert_no_secret_written(gw.written_files(), gw.secrets)
