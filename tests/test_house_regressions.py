"""Scratch: the six bugs of issue 10, checked against the code before the redesign (to be moved)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keygate.testing import MockUpstream

from .helpers import UPSTREAM_SECRET, Gateway, free_port

MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_bug1_numeric_expiry_from_admin_api_is_enforced(tmp_path: Path, mock: MockUpstream) -> None:
    with Gateway(tmp_path, mock.url) as gw:
        token = json.loads(gw.cli("init", "--json").stdout)["token"]
        admin = httpx.Client(base_url=gw.admin_url, headers={"authorization": f"Bearer {token}"})
        created = admin.post("/admin/keys", json={"name": "short", "policy": {"expires_at": time.time() - 5}})
        assert created.status_code == 201, created.text
        client = openai.OpenAI(base_url=gw.url, api_key=created.json()["key"], max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(**CHAT)
        assert info.value.code == "expired_api_key"
        assert mock.requests == []


def test_bug2_out_of_range_limit_writes_nothing(tmp_path: Path, mock: MockUpstream) -> None:
    gw = Gateway(tmp_path, mock.url)
    result = gw.cli("keys", "create", "--name", "big", "--rpm", "99999999999999999999999", check=False)
    assert result.returncode == 1, result.stderr
    assert "--rpm" in result.stderr and "Traceback" not in result.stderr
    assert "kg_" not in result.stdout
    db = sqlite3.connect(tmp_path / "keygate.db")
    assert db.execute("SELECT COUNT(*) FROM keys").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM audit").fetchone() == (0,)


def test_bug4_one_duration_grammar(tmp_path: Path, mock: MockUpstream) -> None:
    gw = Gateway(tmp_path, mock.url)
    before = time.time()
    key = gw.create_key("k", "--expires-in", "1.5d", "--rotate-every", "1.5d")
    expires = key["policy"]["expires_at"]
    from datetime import datetime

    ts = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
    assert before + 1.5 * 86400 - 2 <= ts <= time.time() + 1.5 * 86400 + 1
    assert key["policy"]["rotate_every"] == 1.5 * 86400


class _Recorder:
    """An HTTP server that records what reaches it and answers with ``status`` (and ``location``)."""

    def __init__(self, status: int = 204, location: str | None = None) -> None:
        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                outer.hits.append((self.command, self.path))
                self.send_response(status)
                if location:
                    self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST = do_CONNECT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"


def test_bug5_webhook_follows_no_redirect_and_no_proxy(tmp_path: Path, mock: MockUpstream) -> None:
    target = _Recorder()
    redirector = _Recorder(302, target.url)
    proxy = _Recorder(502)
    limits = {
        "soft_threshold": 0.01,
        "default_max_output_tokens": 1,
        "webhook_url": redirector.url,
    }
    env = {"http_proxy": proxy.url, "HTTP_PROXY": proxy.url, "no_proxy": "", "NO_PROXY": ""}
    with Gateway(tmp_path, mock.url, extra={"limits": limits}, env=env) as gw:
        key = gw.create_key("hooked", "--budget-tokens", "100/day")["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(**CHAT)
        deadline = time.monotonic() + 10
        while not redirector.hits and not proxy.hits and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    assert proxy.hits == []
    assert [m for m, _ in redirector.hits] == ["POST"]
    assert target.hits == []


def test_bug6_stored_upstreams_are_first_class(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys(["sk-stored-only-key-000000000000"])
    # No upstreams in the config (the built-in default) and no key in the environment.
    gw = Gateway(tmp_path, mock.url, env={"KEYGATE_MASTER_KEY": MASTER, "OPENAI_API_KEY": ""})
    config = json.loads(json.dumps(__import__("yaml").safe_load(gw.config_path.read_text())))
    del config["upstreams"]
    gw.config_path.write_text(__import__("yaml").safe_dump(config))
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
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(**CHAT)
    assert mock.requests[-1].headers["authorization"] == "Bearer sk-stored-only-key-000000000000"


def test_bug6_config_names_only_base_urls(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys(["sk-stored-beta-key-111111111111"])
    extra = {
        "upstreams": {"alpha": {"base_url": mock.url}},
        "default_upstream": "beta",
    }
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
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(**CHAT)
    assert mock.requests[-1].headers["authorization"] == "Bearer sk-stored-beta-key-111111111111"
    assert UPSTREAM_SECRET not in json.dumps([r.headers for r in mock.requests])


def test_bug6_serves_with_every_key_pinned_to_a_stored_upstream(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys(["sk-stored-gamma-key-22222222222"])
    gw = Gateway(tmp_path, mock.url, env={"KEYGATE_MASTER_KEY": MASTER, "OPENAI_API_KEY": ""})
    import yaml

    config = yaml.safe_load(gw.config_path.read_text())
    del config["upstreams"]
    gw.config_path.write_text(yaml.safe_dump(config))
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
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(**CHAT)
    assert mock.requests[-1].headers["authorization"] == "Bearer sk-stored-gamma-key-22222222222"
