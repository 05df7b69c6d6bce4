from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from keygate.context import Context
from keygate.metering import StreamMeter, usage_from_json
from keygate.types import Usage


def chunk(i: int) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"delta": {"content": f"w{i}"}}], "usage": None}) + b"\n\n"


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":2}}}\n\n'
STREAM = b"".join(chunk(i) for i in range(5)) + USAGE + b"data: [DONE]\n\n"


def ctx(wants_usage: bool) -> Context:
    c = Context("r", "POST", "/v1/chat/completions", "", {}, "127.0.0.1")
    c.client_wants_usage = wants_usage
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
