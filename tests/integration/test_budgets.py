"""Budgets: reserve then settle, clamping, refusals, stream cut-off, persistence, soft threshold."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from keygate.testing import MockUpstream

from ..helpers import Gateway, ProcessGateway, assert_no_secret_written, free_port

MESSAGES = [{"role": "user", "content": "hi"}]
WORDY = [{"role": "user", "content": "a " * 200}]  # the mock counts 200 prompt tokens


class Hook:
    """A webhook receiver on loopback."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()


def _config(hook_url: str) -> dict[str, Any]:
    return {
        "limits": {
            "default_max_output_tokens": 1,
            "soft_threshold": 0.5,
            "webhook_url": hook_url,
            # $1 per prompt token and $2 per completion token keep the arithmetic readable
            "prices": {"gpt-4o-mini": {"input": 1_000_000, "cached_input": 500_000, "output": 2_000_000}},
        }
    }


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, hook: Hook, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("budgets"), upstream.url, extra=_config(hook.url)) as g:
        yield g


def _budgets(g: Gateway, key_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(g.cli("usage", "--budgets", "--json").stdout)
    return [r for r in rows if r["id"] == key_id]


def _wait_spent(g: Gateway, key_id: str, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _budgets(g, key_id)
        if rows and predicate(rows[0]):
            return rows[0]
        assert time.monotonic() < deadline, f"budget never matched: {rows}"
        time.sleep(0.05)


def _chat(g: Gateway, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{g.url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_token_budget_refuses_once_spent(gw: Gateway, mock: MockUpstream, hook: Hook) -> None:
    key = gw.create_key("tok", "--budget-tokens", "300/day")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=2)
    client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=WORDY)  # type: ignore[arg-type]
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"  # the SDK did not retry
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert len(mock.requests) == 1
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] == 201)  # 200 prompt + 1 completion
    assert row["budget"] == 300 and row["period"] == "day" and row["in_flight"] == 0
    # 201 of 300 passed the 50% soft threshold: one webhook call, no secret in it
    deadline = time.monotonic() + 10
    while not any(h["id"] == key["id"] for h in hook.received):
        assert time.monotonic() < deadline, "no webhook call"
        time.sleep(0.05)
    call = next(h for h in hook.received if h["id"] == key["id"])
    assert call["event"] == "budget.soft_threshold" and call["name"] == "tok" and call["budget"] == 300
    assert "kg_" not in json.dumps(call)


def test_max_output_tokens_are_clamped_to_the_budget(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("clamp", "--budget-tokens", "1000/lifetime")["key"]
    assert _chat(gw, key, max_tokens=5000).status_code == 200
    sent = mock.requests[-1].json()["max_tokens"]
    assert 900 < sent < 1000


def test_non_streamed_request_is_capped_at_its_reservation(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("cap", "--budget-tokens", "1000/lifetime")["key"]
    assert _chat(gw, key).status_code == 200
    assert mock.requests[-1].json()["max_completion_tokens"] == 1  # the configured default


def test_unpriced_model_under_dollar_budget_is_refused(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("usd", "--budget-usd", "100/month")["key"]
    refused = _chat(gw, key, model="mystery-model")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_priced"
    assert mock.requests == []


def test_stream_past_its_reservation_is_cut_off_and_recorded(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("cut", "--budget-tokens", "1000/day")
    client = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    pieces: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
    assert "cut off" in str(info.value)
    assert "".join(pieces) == "Hello from"  # the mock would have sent "Hello from mock"
    entry = gw.wait_entry(lambda e: e["key_id"] == key["id"])
    assert entry["completion_tokens"] == 2 and entry["error_code"] == "budget_exceeded"
    row = _wait_spent(gw, key["id"], lambda r: r["spent"] > 0)
    assert row["spent"] == entry["prompt_tokens"] + 2


def test_dollar_spend_survives_restart_and_crash(
    upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    g = ProcessGateway(tmp_path, upstream.url, extra=_config("http://127.0.0.1:9/unused")).start()
    try:
        key = g.create_key("persist", "--budget-usd", "50/month")
        assert _chat(g, key["key"]).status_code == 200  # 1 prompt ($1) + 1 completion ($2)
        assert g.stop() == 0  # graceful: the last batch is flushed at shutdown
        assert _budgets(g, key["id"])[0]["spent"] == 3
        g.start()
        assert _chat(g, key["key"]).status_code == 200
        _wait_spent(g, key["id"], lambda r: r["spent"] == 6)
        # A crash with a request in flight: its hold is counted at its worst case after restart.
        mock.fail_next("slow", delay=5.0)
        with httpx.stream(
            "POST",
            f"{g.url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
            headers={"authorization": f"Bearer {key['key']}"},
            timeout=30,
        ) as stream:
            assert stream.status_code == 200
            held = _wait_spent(g, key["id"], lambda r: r["in_flight"] > 0)
            assert g.proc is not None
            g.proc.send_signal(signal.SIGKILL)
            g.proc.wait()
            g.proc = None
        g.start()
        # $6 spent + the stream's hold (~$32) + this request's prompt estimate (~$17) > $50
        refused = _chat(g, key["key"])
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "insufficient_quota"
        after = _budgets(g, key["id"])[0]
        assert after["spent"] >= 6 + held["in_flight"]
    finally:
        g.stop()
    assert_no_secret_written(g.written_files(), g.secrets)
