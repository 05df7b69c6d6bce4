"""Context.set_json and upstream_body: the forwarded body is always the JSON the guards see."""

from __future__ import annotations

import orjson

from keygate.testing import context


def test_a_new_field_is_written_in_front_of_the_body_without_serialising_it_again() -> None:
    ctx = context(json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    before = ctx.body
    ctx.set_json("max_completion_tokens", 64)
    assert not ctx.json_changed and ctx.body == b'{"max_completion_tokens":64,' + before[1:]
    ctx.set_json("stream_options", {"include_usage": True})
    assert ctx.upstream_body() is ctx.body and orjson.loads(ctx.body) == ctx.json
    assert ctx.json == {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 64,
        "stream_options": {"include_usage": True},
    }


def test_a_changed_field_is_serialised_once_before_forwarding() -> None:
    ctx = context(json={"model": "gpt-4o", "max_tokens": 500})
    ctx.set_json("max_tokens", 100)  # present: the body is written again, once, when forwarded
    assert ctx.json_changed and orjson.loads(ctx.body)["max_tokens"] == 500
    ctx.set_json("max_completion_tokens", 100)  # after a change: no splice onto a stale body
    sent = ctx.upstream_body()
    assert not ctx.json_changed and orjson.loads(sent) == ctx.json == {
        "model": "gpt-4o",
        "max_tokens": 100,
        "max_completion_tokens": 100,
    }
    assert sent.count(b'"max_tokens"') == 1


def test_an_empty_object_gets_its_field_by_serialising() -> None:
    ctx = context(json={})
    ctx.set_json("max_tokens", 5)
    assert orjson.loads(ctx.upstream_body()) == {"max_tokens": 5}
