"""keygate.testing.guards: one real guard on one request, in process, without a server."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from keygate.chain import Guard
from keygate.context import Context
from keygate.errors import KeygateError, PayloadTooLarge, PermissionDenied
from keygate.guards.body import BodyReader
from keygate.guards.policy import RequestPolicy
from keygate.testing import context, key_record, run_complete, run_request
from keygate.types import Team

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_context_is_the_request_as_the_chain_sees_it() -> None:
    ctx = context(json=CHAT, headers={"OpenAI-Beta": "x", "X-Forwarded-For": "10.0.0.1"}, peer="10.9.8.7")
    assert (ctx.method, ctx.path, ctx.query, ctx.request_id) == ("POST", "/v1/chat/completions", "", "test-1")
    assert ctx.route is not None and ctx.route.name == "chat.completions"
    raw = orjson.dumps(CHAT)
    assert ctx.headers == {
        "openai-beta": "x",
        "x-forwarded-for": "10.0.0.1",
        "content-type": "application/json",
        "content-length": str(len(raw)),
    }
    assert (ctx.peer_ip, ctx.client_ip) == ("10.9.8.7", "10.9.8.7")
    # As the body guard would have left it:
    assert (ctx.body, ctx.json, ctx.model, ctx.stream) == (raw, CHAT, "gpt-4o", False)
    assert ctx.json is not CHAT  # a copy: a guard changing it does not change the test's data
    assert ctx.key is None and ctx.team is None
    assert ctx.status == 0 and ctx.error is None and 0 <= ctx.latency_ms < 60_000


def test_context_stream_model_and_given_headers() -> None:
    assert context(json={**CHAT, "stream": True}).stream is True
    # Only a route that streams can: embeddings ignore "stream".
    assert (
        context("POST", "/v1/embeddings", json={"model": "m", "input": "x", "stream": True}).stream is False
    )
    assert context(json={"model": 7, "messages": []}).model is None
    ctx = context(
        json=CHAT, headers={"Content-Type": "application/json; charset=utf-8", "Content-Length": "5"}
    )
    assert ctx.headers == {"content-type": "application/json; charset=utf-8", "content-length": "5"}
    ctx = context("GET", "/v1/models")
    assert ctx.body == b"" and ctx.json is None and ctx.headers == {}
    assert ctx.route is not None and ctx.route.name == "models"
    assert context("GET", "/v1/assistants").route is None
    key, team = key_record("key_a"), Team("team_1", "t", 0.0)
    ctx = context(key=key, team=team)
    assert (ctx.key, ctx.team) == (key, team)


def test_an_unparsed_context_has_only_the_raw_body_to_read() -> None:
    raw = b'{"model": "gpt-4o", "messages": []}'
    ctx = context(body=raw, parsed=False)
    assert ctx.json is None and ctx.body == b"" and ctx.headers["content-length"] == str(len(raw))

    async def read() -> tuple[bytes, list[bytes]]:
        return await ctx.proto(), [part async for part in ctx.proto]

    assert run(read()) == (raw, [raw])
    empty = context("GET", "/v1/models", parsed=False)
    assert run(empty.proto()) == b""

    async def chunks() -> list[bytes]:
        return [part async for part in empty.proto]

    assert run(chunks()) == []


def test_key_record() -> None:
    key = key_record()
    assert (key.id, key.name, key.hint, key.status, key.policy, key.upstream) == (
        "key_test",
        "key_test",
        "kg_...test",
        "active",
        {},
        None,
    )
    policy = {"models": ["gpt-4o"]}
    key = key_record("key_b", policy, name="billing", upstream="azure", status="revoked")
    assert (key.id, key.name, key.upstream, key.active) == ("key_b", "billing", "azure", False)
    assert key.policy == policy and key.policy is not policy


def test_run_request_with_a_plain_guard() -> None:
    ctx = context(json=CHAT, key=key_record(policy={"max_output_tokens": 256}))
    assert run(run_request(RequestPolicy(), ctx)) is None
    assert ctx.json is not None and ctx.json["max_completion_tokens"] == 256
    assert orjson.loads(ctx.upstream_body())["max_completion_tokens"] == 256
    ctx = context(json=CHAT, key=key_record(policy={"models": ["o3-mini"]}))
    err = run(run_request(RequestPolicy(), ctx))
    assert isinstance(err, PermissionDenied) and err.code == "model_not_allowed"


def test_run_request_with_an_awaiting_guard() -> None:
    reader = BodyReader(max_bytes=1000)
    ctx = context(json={**CHAT, "stream": True}, parsed=False)
    assert ctx.json is None
    assert run(run_request(reader, ctx)) is None
    assert ctx.json == {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert (ctx.model, ctx.stream, ctx.client_wants_usage) == ("gpt-4o", True, False)
    big = context(json={"model": "m", "input": "x" * 2000}, parsed=False)
    assert isinstance(run(run_request(reader, big)), PayloadTooLarge)


def test_run_request_refuses_a_guard_that_returns_something_else() -> None:
    class Wrong(Guard):
        def request(self, ctx: Context) -> Any:
            return "not an error"

    with pytest.raises(AssertionError):
        run(run_request(Wrong(), context()))


def test_run_complete_runs_the_complete_phase() -> None:
    seen: list[tuple[int, KeygateError | None]] = []

    class Watch(Guard):
        def complete(self, ctx: Context) -> None:
            seen.append((ctx.status, ctx.error))

    ctx = context()
    ctx.status = 204
    run_complete(Watch(), ctx)
    assert seen == [(204, None)]
