"""keygate.metering: the stream meter, usage from whole answers, and asking streams for usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI

from keygate.context import Context
from keygate.metering import StreamMeter, ask_for_usage, fill_usage, usage_from_json
from keygate.testing import MockUpstream, context
from keygate.testing import _payloads as payloads
from keygate.types import Usage


def chunk(i: int) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"delta": {"content": f"w{i}"}}], "usage": None}) + b"\n\n"


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":2}}}\n\n'
STREAM = b"".join(chunk(i) for i in range(5)) + USAGE + b"data: [DONE]\n\n"


def ctx(wants_usage: bool) -> Context:
    c = Context("r", "POST", "/v1/chat/completions", "", {}, "127.0.0.1")
    c.client_wants_usage = wants_usage
    c.usage.counted = True  # (as the budget guard sets it for a stream it watches)
    return c


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12), st.booleans())
def test_any_chunking_gives_same_output_and_usage(cuts: list[int], wants_usage: bool) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    c = ctx(wants_usage)
    tap = StreamMeter(c)
    out = b"".join(tap.feed(p) for p in pieces) + tap.flush()
    expected = STREAM if wants_usage else STREAM.replace(USAGE, b"")
    assert out == expected
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.cached_tokens) == (7, 5, 2)


def test_complete_events_are_forwarded_immediately() -> None:
    tap = StreamMeter(ctx(False))
    assert tap.feed(chunk(0)) == chunk(0)
    assert tap.feed(chunk(1)[:10]) == b""
    assert tap.feed(chunk(1)[10:]) == chunk(1)


def test_responses_api_usage_is_captured() -> None:
    c = ctx(True)
    event = b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":{"input_tokens":3,"output_tokens":4}}}\n\n'
    assert StreamMeter(c).feed(event) == event
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (3, 4)


def test_usage_from_json_body() -> None:
    u = Usage()
    usage_from_json(
        b'{"data":[{"x":{"usage":1}}],"usage":{"prompt_tokens":3,"completion_tokens":4,'
        b'"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":0}}}',
        u,
    )
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (3, 4, 1)
    u = Usage()
    usage_from_json(b'{"usage": {"input_tokens": 5, "output_tokens": 6}}', u)
    assert (u.prompt_tokens, u.completion_tokens) == (5, 6)
    u = Usage()
    for broken in (b'{"usage":{"prompt_tokens":3', b'{"usage": null}', b"not json", b'{"usage":{"a":}}'):
        usage_from_json(broken, u)
    assert (u.prompt_tokens, u.completion_tokens) == (0, 0)


def test_usage_is_the_top_level_usage_of_the_answer_only() -> None:
    # The Responses API echoes the client's metadata after the real usage.
    answer = {
        "object": "response",
        "usage": {"input_tokens": 9, "output_tokens": 4},
        "metadata": {"usage": "x"},
        "output": [{"content": [{"text": '"usage":{"input_tokens":0}'}]}],
    }
    u = Usage()
    usage_from_json(orjson.dumps(answer), u)
    assert (u.prompt_tokens, u.completion_tokens, u.reported) == (9, 4, True)
    # a usage object anywhere but the top is not the answer's
    for body in (
        {"metadata": {"usage": {"input_tokens": 1, "output_tokens": 1}}},
        {"choices": [{"usage": {"prompt_tokens": 1}}]},
        {"usage": {"a": 1}},
        {"usage": {"prompt_tokens": True}},
    ):
        u = Usage()
        usage_from_json(orjson.dumps(body), u)
        assert (u.prompt_tokens, u.completion_tokens, u.reported) == (0, 0, False), body
    u = Usage()
    usage_from_json(orjson.dumps([{"usage": {"prompt_tokens": 3}}]), u)  # not an object
    assert not u.reported


def test_a_client_set_metadata_usage_does_not_zero_a_response(
    gateway: Any, mock: MockUpstream, client_key: str
) -> None:
    client = OpenAI(base_url=gateway.url, api_key=client_key, max_retries=0)
    answer = client.responses.create(model="gpt-4o", input="one two three", metadata={"usage": "x"})
    assert answer.usage is not None and answer.usage.input_tokens == 3
    entry = gateway.wait_entry(lambda e: e["route"] == "responses" and e["prompt_tokens"] > 0)
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (3, payloads.FULL_WORDS)


# --- output events per route (Usage.streamed) ------------------------------------------------------


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def test_tool_call_arguments_and_refusals_count_as_chat_output() -> None:
    def delta(d: dict[str, Any]) -> bytes:
        return _sse({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d}]})

    first = {
        "tool_calls": [
            {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
        ]
    }
    events = [delta({"role": "assistant", "content": None, "refusal": None}), delta(first)]
    events += [delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"x": "1"}'}}]})] * 7
    events += [delta({"refusal": "I can't"})] * 3 + [delta({"refusal": ""})]
    events += [delta({"function_call": {"arguments": "{}"}})]  # the legacy form
    _, usage = _meter("POST", "/v1/chat/completions", events)
    assert usage.streamed == 7 + 3 + 1


def test_every_responses_delta_counts_as_output() -> None:
    kinds = (
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
        "response.refusal.delta",
    )
    events = [
        b"event: "
        + kind.encode()
        + b"\n"
        + _sse({"type": kind, "item_id": "i", "delta": "a b", "sequence_number": n})
        for n, kind in enumerate(kinds)
    ]
    _, usage = _meter("POST", "/v1/responses", events)
    assert usage.streamed == len(kinds)


def _meter(method: str, path: str, events: list[bytes], wants_usage: bool = True) -> tuple[bytes, Usage]:
    c = context(method, path)
    c.client_wants_usage = wants_usage
    c.usage.counted = True  # (as the budget guard sets it for a stream it watches)
    meter = StreamMeter(c)
    out = b"".join(meter.feed(e) for e in events) + meter.flush()
    return out, c.usage


@pytest.mark.parametrize(
    ("path", "build", "limit_field"),
    [
        ("/v1/chat/completions", payloads.chat_stream, "max_completion_tokens"),
        ("/v1/completions", payloads.completion_stream, "max_tokens"),
        ("/v1/responses", payloads.response_stream, "max_output_tokens"),
    ],
)
def test_streams_count_their_output_events(path: str, build: Any, limit_field: str) -> None:
    body = {"model": "gpt-4o", "messages": [], "prompt": "p", "input": "i"}
    events = build(body)
    out, usage = _meter("POST", path, events)
    assert out == b"".join(events)  # passed through unchanged
    assert usage.streamed == payloads.FULL_WORDS  # one per word; empty deltas and roles count 0
    _, usage = _meter("POST", path, build({**body, limit_field: 2}))
    assert usage.streamed == 2


def test_a_stream_cut_short_has_counted_what_passed() -> None:
    events = payloads.chat_stream({"model": "gpt-4o", "messages": []})
    c = context("POST", "/v1/chat/completions")
    c.usage.counted = True
    meter = StreamMeter(c)
    for e in events[:3]:  # the role chunk and two words, then the upstream went away
        meter.feed(e)
    assert (c.usage.streamed, c.usage.completion_tokens) == (2, 0)


def test_a_stream_nobody_watches_is_not_counted() -> None:
    events = payloads.chat_stream({"model": "gpt-4o", "messages": []})
    c = context("POST", "/v1/chat/completions")  # no budget set Usage.counted
    meter = StreamMeter(c)
    assert b"".join(meter.feed(e) for e in events) == b"".join(events)
    assert c.usage.streamed == 0


def test_routes_without_an_output_event_count_nothing() -> None:
    events = payloads.chat_stream({"model": "gpt-4o", "messages": []})
    _, usage = _meter("POST", "/v1/audio/transcriptions", events)
    assert usage.streamed == 0
    c = Context("r", "POST", "/v1/chat/completions", "", {}, "127.0.0.1")  # no route matched
    meter = StreamMeter(c)
    assert meter.feed(events[1]) == events[1] and c.usage.streamed == 0


def test_the_usage_chunk_of_a_real_stream_is_read_and_hidden_when_not_asked_for() -> None:
    events = payloads.chat_stream(
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "a b c d"}],
            "stream_options": {"include_usage": True},
        }
    )
    out, usage = _meter("POST", "/v1/chat/completions", events, wants_usage=False)
    assert b'"choices":[]' not in out and out.endswith(b"data: [DONE]\n\n")
    assert (usage.prompt_tokens, usage.completion_tokens, usage.streamed) == (4, 3, 3)
    out, _ = _meter("POST", "/v1/chat/completions", events, wants_usage=True)
    assert out == b"".join(events)


def test_crlf_event_boundaries_and_oversized_events() -> None:
    c = context()
    c.client_wants_usage = False
    c.usage.counted = True
    meter = StreamMeter(c)
    crlf = b'data: {"choices":[{"delta":{"content":"w0"}}]}\r\n\r\n'
    assert meter.feed(crlf[:-3]) == b""
    assert meter.feed(crlf[-3:]) == crlf  # passed through as it came
    # An event that mentions usage is re-framed (with LF, which every SSE reader accepts).
    assert meter.feed(chunk(1).replace(b"\n", b"\r\n")) == chunk(1)
    assert c.usage.streamed == 2
    usage = USAGE.replace(b"\n", b"\r\n")
    assert meter.feed(usage) == b""  # hidden, and read
    assert c.usage.prompt_tokens == 7
    # An "event" without a boundary beyond the limit is passed through rather than held forever.
    huge = b"data: " + b"x" * ((1 << 20) + 10)
    assert meter.feed(huge) == huge
    assert meter.flush() == b""


def test_events_that_only_mention_usage_pass_through() -> None:
    c = ctx(False)
    meter = StreamMeter(c)
    for event in (
        b'data: {"note": "usage"}\n\n',  # a dict without a usage object
        b'data: ["usage"]\n\n',  # not a dict
        b'data: "usage" is not JSON {\n\n',
        b'data: {"usage": {"prompt_tokens": 2}, "choices": [{"index": 0}]}\n\n',  # carries output too
    ):
        assert meter.feed(event) == event
    assert c.usage.prompt_tokens == 2
    # Usage left in the tail when the stream ends is read too (and hidden, if the client did not ask).
    assert meter.feed(USAGE[:-2]) == b""
    assert meter.flush() == b""
    assert c.usage.completion_tokens == 5


def test_fill_usage_ignores_what_is_not_a_usage_object() -> None:
    u = Usage()
    fill_usage(None, u)
    fill_usage([1], u)
    fill_usage({"prompt_tokens": "3", "completion_tokens": None, "prompt_tokens_details": []}, u)
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (0, 0, 0)
    fill_usage({"input_tokens": 4, "input_tokens_details": {"cached_tokens": 2}}, u)
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.total_tokens) == (4, 0, 2, 4)


def test_usage_from_json_without_a_usage_object() -> None:
    u = Usage()
    for body in (b"{}", b'{"usage"}', b'{"usage": 5}', b'{"usage" x {"prompt_tokens": 1}}'):
        usage_from_json(body, u)
    deep = b'{"usage":{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}}}'
    usage_from_json(deep, u)
    assert (u.prompt_tokens, u.completion_tokens) == (0, 0)


# --- ask_for_usage ------------------------------------------------------------------------------


def test_ask_for_usage_asks_when_the_client_did_not() -> None:
    c = context(json={"model": "m", "messages": [], "stream": True})
    ask_for_usage(c)
    assert c.json is not None and c.json["stream_options"] == {"include_usage": True}
    assert orjson.loads(c.upstream_body())["stream_options"] == {"include_usage": True}
    assert c.client_wants_usage is False


def test_ask_for_usage_keeps_the_clients_other_options() -> None:
    c = context(
        "POST",
        "/v1/completions",
        json={"model": "m", "stream": True, "stream_options": {"include_usage": False, "x": 1}},
    )
    ask_for_usage(c)
    assert c.json is not None and c.json["stream_options"] == {"include_usage": True, "x": 1}
    assert c.client_wants_usage is False
    c = context(json={"model": "m", "messages": [], "stream": True, "stream_options": "odd"})
    ask_for_usage(c)
    assert c.json is not None and c.json["stream_options"] == {"include_usage": True}


def test_ask_for_usage_leaves_alone_what_needs_no_asking() -> None:
    asked = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    for c in (
        context(json=asked),  # the client asked itself
        context(json={"model": "m", "messages": []}),  # not a stream
        context("POST", "/v1/responses", json={"model": "m", "input": "x", "stream": True}),  # reports anyway
    ):
        before = c.body
        ask_for_usage(c)
        assert c.body == before and c.client_wants_usage is True
    c = context(json={"model": "m", "messages": [], "stream": True}, parsed=False)
    c.stream = True  # a stream whose body was never parsed: nothing to change
    ask_for_usage(c)
    assert c.json is None and c.client_wants_usage is True


def test_negative_counts_are_not_usage() -> None:
    # A negative count would pay spend back; it is ignored, so the request is charged its estimate.
    usage = Usage()
    fill_usage(
        {
            "prompt_tokens": -1_000_000,
            "completion_tokens": -5,
            "prompt_tokens_details": {"cached_tokens": -9},
        },
        usage,
    )
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reported) == (
        0,
        0,
        0,
        False,
    )
