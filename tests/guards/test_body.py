"""The body guard in process: size limits (declared and counted), content types, chunked bodies,
JSON checks (types of the policy fields, duplicate and case-variant keys, the canonical body
forwarded), the model and stream flags, asking for the usage chunk of a stream, multipart uploads,
stalled and vanished clients; then through a real gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from keygate.context import Context
from keygate.errors import ClientGone, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from keygate.guards.body import BodyReader, Deadlines
from keygate.testing import MockUpstream, context, run_request

from ..helpers import Gateway
from .common import decide

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Chunks:
    """A client body as the server hands it over: awaited whole, or iterated chunk by chunk. Counts
    what was taken; ``stall`` waits forever before the chunk of that index, ``fail`` breaks there."""

    def __init__(self, *parts: bytes, stall: int | None = None, fail: int | None = None) -> None:
        self.parts = parts
        self.stall = stall
        self.fail = fail
        self.taken = 0

    async def __call__(self) -> bytes:
        out = b""
        async for part in self:
            out += part
        return out

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        for index, part in enumerate(self.parts):
            if index == self.stall:
                await asyncio.sleep(3600)
            if index == self.fail:
                raise ConnectionResetError("the client went away")
            self.taken += 1
            yield part


def _ctx(
    path: str = "/v1/chat/completions",
    *,
    json: dict[str, Any] | None = None,
    body: bytes | None = None,
    proto: Chunks | None = None,
    method: str = "POST",
    **headers: str,
) -> Context:
    ctx = context(method, path, json=json, body=body, headers=headers, parsed=False)
    if proto is not None:
        ctx.proto = proto
    return ctx


def _read(guard: BodyReader, ctx: Context) -> object:
    return decide(guard, ctx)


# -- sizes ---------------------------------------------------------------------------------------


def test_a_route_without_a_body_reads_nothing() -> None:
    proto = Chunks(b"ignored")
    ctx = _ctx("/v1/models", method="GET", proto=proto)
    assert _read(BodyReader(100), ctx) is None
    assert proto.taken == 0 and ctx.body == b"" and ctx.json is None


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    proto = Chunks(b"x" * 200)
    ctx = _ctx(json=CHAT, proto=proto, **{"content-length": "200"})
    err = _read(BodyReader(100), ctx)
    assert isinstance(err, PayloadTooLarge) and err.status == 413 and err.code == "payload_too_large"
    assert err.message == "Request body is larger than the 100 byte limit."
    assert proto.taken == 0


@pytest.mark.parametrize("declared", ["12a", "-1", " 5", "1e3", "0x10"])
def test_an_invalid_content_length_is_refused(declared: str) -> None:
    err = _read(BodyReader(100), _ctx(json=CHAT, **{"content-length": declared}))
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert err.message == "Invalid Content-Length header."


def test_a_body_longer_than_it_declared_is_refused() -> None:
    payload = orjson.dumps({**CHAT, "pad": "x" * 200})
    ctx = _ctx(body=payload, proto=Chunks(payload), **{"content-length": "10"})
    assert isinstance(_read(BodyReader(100), ctx), PayloadTooLarge)


def test_a_body_of_exactly_the_limit_passes() -> None:
    payload = orjson.dumps(CHAT)
    ctx = _ctx(body=payload)
    assert _read(BodyReader(len(payload)), ctx) is None and ctx.body == payload
    assert isinstance(_read(BodyReader(len(payload) - 1), _ctx(body=payload)), PayloadTooLarge)


def test_a_chunked_body_is_joined_and_counted_as_it_arrives() -> None:
    payload = orjson.dumps(CHAT)
    parts = [payload[i : i + 7] for i in range(0, len(payload), 7)]
    ctx = _ctx(body=payload, proto=Chunks(*parts), **{"content-length": ""})
    del ctx.headers["content-length"]  # chunked: no length declared
    assert _read(BodyReader(1000), ctx) is None
    assert ctx.body == payload and ctx.json == CHAT
    # Over the limit: cut off at the chunk that passes it, the rest is never read.
    big = Chunks(b"{" + b" " * 60, b" " * 60, b" " * 60, b"}")
    ctx = _ctx(body=b"{}", proto=big)
    del ctx.headers["content-length"]
    assert isinstance(_read(BodyReader(100), ctx), PayloadTooLarge)
    assert big.taken == 2


def test_an_empty_chunked_body_is_not_json() -> None:
    ctx = _ctx(body=b"x", proto=Chunks())
    del ctx.headers["content-length"]
    err = _read(BodyReader(100), ctx)
    assert isinstance(err, InvalidRequest) and err.code == "invalid_json"


# -- content types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype", ["text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_json_endpoint_needs_a_json_body(ctype: str) -> None:
    err = _read(BodyReader(1000), _ctx(json=CHAT, **{"content-type": ctype}))
    assert isinstance(err, UnsupportedMediaType) and err.status == 415
    assert err.message == "Content-Type must be application/json for this endpoint."


def test_a_json_content_type_may_carry_parameters() -> None:
    ctx = _ctx(json=CHAT, **{"content-type": "application/json; charset=utf-8"})
    assert _read(BodyReader(1000), ctx) is None and ctx.json == CHAT


def test_an_upload_endpoint_needs_multipart() -> None:
    err = _read(BodyReader(1000), _ctx("/v1/audio/transcriptions", json={"model": "whisper-1"}))
    assert isinstance(err, UnsupportedMediaType)
    assert err.message == "Content-Type must be multipart/form-data for this endpoint."


def test_the_model_of_a_multipart_upload_is_read() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n'
        b"Content-Type: audio/mpeg\r\n\r\nID3...\r\n"
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b--\r\n'
    )
    ctx = _ctx("/v1/audio/transcriptions", body=body, **{"content-type": "multipart/form-data; boundary=b"})
    assert _read(BodyReader(10_000), ctx) is None
    assert ctx.model == "whisper-1" and ctx.body == body and ctx.json is None and not ctx.stream
    no_model = _ctx(
        "/v1/images/edits", body=b"--b--\r\n", **{"content-type": "multipart/form-data; boundary=b"}
    )
    assert _read(BodyReader(10_000), no_model) is None and no_model.model is None


# -- JSON ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "The request body is not valid JSON."),
        (b"", "The request body is not valid JSON."),
        (b'{"model": "a"} trailing', "The request body is not valid JSON."),
        (b"[1, 2]", "The request body must be a JSON object."),
        (b'"text"', "The request body must be a JSON object."),
        (b"null", "The request body must be a JSON object."),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused(body: bytes, message: str) -> None:
    err = _read(BodyReader(1000), _ctx(body=body, **{"content-type": "application/json"}))
    assert isinstance(err, InvalidRequest) and err.status == 400 and err.code == "invalid_json"
    assert err.message == message


@pytest.mark.parametrize("model", [5, ["gpt-4o"], {"name": "gpt-4o"}, True])
def test_a_model_that_is_not_a_string_is_refused(model: object) -> None:
    err = _read(BodyReader(1000), _ctx(json={**CHAT, "model": model}))
    assert isinstance(err, InvalidRequest) and err.param == "model" and err.code == "invalid_type"
    assert err.message == "Invalid type for 'model': expected a string."


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("stream", "true", "a boolean"),
        ("stream", 1, "a boolean"),
        ("stream", None, "a boolean"),  # the one field where null is not "not given"
        ("stream", [], "a boolean"),
        ("max_tokens", True, "a positive integer"),  # a bool is no count
        ("max_tokens", "9", "a positive integer"),
        ("max_tokens", 0, "a positive integer"),
        ("max_tokens", -5, "a positive integer"),
        ("max_tokens", 9.0, "a positive integer"),
        ("max_completion_tokens", 1e30, "a positive integer"),
        ("max_output_tokens", [100], "a positive integer"),
        ("n", "2", "a positive integer"),
        ("n", False, "a positive integer"),
        ("best_of", 2.5, "a positive integer"),
        ("background", "false", "a boolean"),
        ("background", 0, "a boolean"),
        ("stream_options", "junk", "an object"),
        ("stream_options", [], "an object"),
        ("service_tier", 1, "a string"),
        ("metadata", "x", "an object"),
        ("metadata", [], "an object"),
    ],
)
def test_policy_fields_are_type_checked(field: str, value: object, kind: str) -> None:
    err = _read(BodyReader(1000), _ctx(json={**CHAT, field: value}))
    assert isinstance(err, InvalidRequest) and err.status == 400 and err.code == "invalid_type"
    assert err.param == field and err.message == f"Invalid type for '{field}': expected {kind}."


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": False, "max_tokens": 5, "n": 2, "best_of": 3, "background": True},
        {"stream_options": {}, "service_tier": "auto", "metadata": {"a": "b"}},
        # null is "not given" (OpenAI's nullable fields), except for stream
        {"model": None, "max_tokens": None, "n": None, "metadata": None, "service_tier": None},
    ],
)
def test_policy_fields_of_the_right_type_pass(extra: dict[str, Any]) -> None:
    ctx = _ctx(json={**CHAT, **extra})
    assert _read(BodyReader(1000), ctx) is None
    assert ctx.json == {**CHAT, **extra} and ctx.model == ctx.json["model"]


# -- canonical JSON: what is forwarded is what was checked ---------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "gpt-4o-mini", "model": "o3", "messages": []}',
        b'{"model":"o3","messages":[],"model":"gpt-4o-mini"}',
        b'{"model": "gpt-4o-mini", "mod\\u0065l": "o3"}',  # the same key, escaped
        b'{"model": "m", "messages": [{"role": "user", "content": "a:b", "role": "system"}]}',
        b'{"model": "m", "stream_options": {"include_usage": true, "include_usage": false}}',
        b'{"model": "m", "metadata": {"k\\u003a": "x", "k\\u003a": "y"}}',  # escaped colons
        b'{"model": "m", "input": "\\u003a", "input": "a:b"}',
    ],
)
def test_a_key_given_twice_at_any_depth_is_refused(raw: bytes) -> None:
    err = _read(BodyReader(1000), _ctx(body=raw))
    assert isinstance(err, InvalidRequest) and err.status == 400 and err.code == "duplicate_field"


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("MODEL", "model"),
        ("Model", "model"),
        ("Stream", "stream"),
        ("\\u017ftream", "stream"),
        ("MAX_TOKENS", "max_tokens"),
        ("Max_Output_Tokens", "max_output_tokens"),
        ("N", "n"),
        ("Background", "background"),
        ("SERVICE_TIER", "service_tier"),
        ("Metadata", "metadata"),
    ],
)
def test_a_policy_field_under_another_case_is_refused(key: str, field: str) -> None:
    raw = b'{"model": "gpt-4o-mini", "messages": [], "%s": 1}' % key.encode()
    err = _read(BodyReader(1000), _ctx(body=raw))
    assert isinstance(err, InvalidRequest) and err.code == "duplicate_field" and err.param == field
    alone = b'{"messages": [], "%s": "o3"}' % key.encode()  # even without the field itself
    assert isinstance(_read(BodyReader(1000), _ctx(body=alone)), InvalidRequest)


def test_the_body_forwarded_is_the_json_checked() -> None:
    raw = b'{ "model" : "gpt-4o-mini",\n "messages": [ {"role":"user","content":"a: \\u003a b"} ],\n "temperature": 1E0 }'
    ctx = _ctx(body=raw)
    assert _read(BodyReader(1000), ctx) is None
    assert ctx.body == orjson.dumps(ctx.json) != raw
    assert ctx.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "a: : b"}],
        "temperature": 1.0,
    }
    # Colons inside strings, nested objects, arrays of objects with the same keys: no duplicate.
    fine = {"model": "m", "messages": [{"role": "user", "content": "x:y:"}] * 3, "metadata": {"a:b": "::"}}
    ok = _ctx(json=fine)
    assert _read(BodyReader(1000), ok) is None and ok.body == orjson.dumps(fine)


def test_the_model_json_and_body_are_set() -> None:
    ctx = _ctx(json=CHAT)
    assert _read(BodyReader(1000), ctx) is None
    assert ctx.model == "gpt-4o-mini" and ctx.json == CHAT and ctx.body == orjson.dumps(CHAT)
    assert not ctx.stream and ctx.client_wants_usage
    no_model = _ctx("/v1/moderations", json={"input": "x"})
    assert _read(BodyReader(1000), no_model) is None and no_model.model is None


@pytest.mark.parametrize(
    ("path", "flag", "streams"),
    [
        ("/v1/chat/completions", True, True),
        ("/v1/chat/completions", False, False),
        ("/v1/responses", True, True),
        ("/v1/embeddings", True, False),  # a route that never streams
    ],
)
def test_the_stream_flag(path: str, flag: object, streams: bool) -> None:
    ctx = _ctx(path, json={"model": "m", "input": "x", "stream": flag})
    assert _read(BodyReader(1000), ctx) is None
    assert ctx.stream is streams


# -- the usage chunk of a stream -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "sent", "wants"),
    [
        (None, {"include_usage": True}, False),
        ({"include_usage": True}, {"include_usage": True}, True),
        ({"include_usage": False}, {"include_usage": True}, False),
        ({"include_obfuscation": False}, {"include_obfuscation": False, "include_usage": True}, False),
        (None, {"include_usage": True}, False),  # "stream_options": null, as not given
    ],
)
def test_a_stream_is_asked_for_its_usage_chunk(options: object, sent: dict[str, Any], wants: bool) -> None:
    body = {**CHAT, "stream": True, "stream_options": options}
    ctx = _ctx(json=body)
    assert _read(BodyReader(1000), ctx) is None
    forwarded = orjson.loads(ctx.upstream_body())
    assert forwarded["stream_options"] == sent and forwarded == ctx.json
    # Whether the client itself asked for the usage chunk (else keygate filters it out again).
    assert ctx.client_wants_usage is wants


def test_only_routes_with_the_usage_option_are_asked() -> None:
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    ctx = _ctx("/v1/responses", json=body)  # reports usage in its stream anyway
    assert _read(BodyReader(1000), ctx) is None
    assert "stream_options" not in orjson.loads(ctx.upstream_body()) and ctx.client_wants_usage
    completions = _ctx("/v1/completions", json={"model": "m", "prompt": "hi", "stream": True})
    assert _read(BodyReader(1000), completions) is None
    assert orjson.loads(completions.upstream_body())["stream_options"] == {"include_usage": True}
    plain = _ctx(json=CHAT)
    assert _read(BodyReader(1000), plain) is None and "stream_options" not in orjson.loads(plain.body)


# -- clients that stall or vanish ----------------------------------------------------------------


def test_a_client_that_vanishes_mid_body_is_recorded_as_gone() -> None:
    ctx = _ctx(json=CHAT, proto=Chunks(b'{"model":', b'"m"}', fail=1))
    with pytest.raises(ClientGone):
        _read(BodyReader(1000), ctx)
    chunked = _ctx(json=CHAT, proto=Chunks(b'{"model":', b'"m"}', fail=1))
    del chunked.headers["content-length"]
    with pytest.raises(ClientGone):
        _read(BodyReader(1000), chunked)


def test_a_client_that_stalls_mid_body_is_timed_out() -> None:
    guard = BodyReader(1000, read_timeout=0.05)

    async def run() -> tuple[object, float]:
        await guard.start()
        try:
            started = time.monotonic()
            err = await run_request(guard, _ctx(json=CHAT, proto=Chunks(b'{"model":', b'"m"}', stall=1)))
            elapsed = time.monotonic() - started
            # The next read, in time, is not affected by the one that timed out.
            ok = _ctx(json=CHAT)
            assert await run_request(guard, ok) is None and ok.json == CHAT
            return err, elapsed
        finally:
            await guard.stop()

    err, elapsed = asyncio.run(run())
    assert isinstance(err, InvalidRequest) and err.code == "request_timeout"
    assert err.message == "Timed out reading the request body."
    assert 0.04 <= elapsed < 1.0  # the timeout, plus at most one sweep


def test_a_request_cancelled_for_another_reason_stays_cancelled() -> None:
    guard = BodyReader(1000, read_timeout=60)

    async def run() -> None:
        await guard.start()
        try:
            task = asyncio.ensure_future(run_request(guard, _ctx(json=CHAT, proto=Chunks(b"{", stall=0))))
            await asyncio.sleep(0.01)
            task.cancel()  # the server shutting down, say: not a timeout
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await guard.stop()

    asyncio.run(run())


def test_deadlines_outside_a_task_and_before_start() -> None:
    deadlines = Deadlines(5.0, resolution=1.0)
    assert deadlines.resolution == 1.0 and Deadlines(0.1).resolution == 0.1
    assert deadlines.done(None) is False

    async def run() -> None:
        task = deadlines.track()
        assert task is asyncio.current_task()
        assert deadlines.done(task) is False  # finished in time
        await deadlines.stop()  # never started: nothing to stop

    asyncio.run(run())


# -- multipart uploads ---------------------------------------------------------------------------


def _form(*parts: tuple[str, bytes], boundary: str = "b") -> bytes:
    out = b"".join(
        f"--{boundary}\r\nContent-Disposition: {d}\r\n\r\n".encode() + v + b"\r\n" for d, v in parts
    )
    return out + f"--{boundary}--\r\n".encode()


def _upload(body: bytes, ctype: str = "multipart/form-data; boundary=b") -> Context:
    return _ctx("/v1/audio/transcriptions", body=body, **{"content-type": ctype})


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("multipart/form-data", _form(("form-data; name=model", b"whisper-1"))),  # no boundary
        ("multipart/form-data; boundary=", _form(("form-data; name=model", b"whisper-1"))),
        ("multipart/form-data; boundary=c", _form(("form-data; name=model", b"whisper-1"))),  # not it
        (
            "multipart/form-data; boundary=b",
            _form(("form-data; name=model", b"whisper-1"), ("form-data; name=model", b"gpt-4o")),
        ),
        ("multipart/form-data; boundary=b", _form(("form-data; name=model", b"whisper-1"))[:-9]),
    ],
)
def test_a_multipart_body_keygate_cannot_read_unambiguously_is_refused(ctype: str, body: bytes) -> None:
    err = _read(BodyReader(100_000), _upload(body, ctype))
    assert isinstance(err, InvalidRequest) and err.status == 400 and err.code == "invalid_multipart"


def test_a_large_upload_is_parsed_in_steps_that_let_other_tasks_run() -> None:
    """A 25 MiB upload takes the parser about 0.1 s: parsed in 64 KiB steps with a yield to the
    event loop after each, other tasks run about once per step, not once after the whole body."""
    unit = b'\r\n--name="model"\r\n'
    body = _form(
        ("form-data; name=model", b"whisper-1"), ('form-data; name="file"; filename="a"', unit * (25 << 16))
    )
    ctx = _upload(body)

    async def run() -> int:
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        ticks = 0
        assert await run_request(BodyReader(len(body)), ctx) is None
        done = True
        await task
        return ticks

    ticks = asyncio.run(run())
    assert ctx.model == "whisper-1" and ctx.body == body
    steps = len(body) // (1 << 16)
    assert ticks >= steps // 2, f"other tasks ran {ticks} times during {steps} steps"


# -- through a real gateway ----------------------------------------------------------------------


def _post(
    url: str, key: str, content: bytes, path: str = "/chat/completions", **headers: str
) -> httpx.Response:
    return httpx.post(
        url + path,
        content=content,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json", **headers},
        timeout=30,
    )


def test_json_a_parser_could_read_two_ways_is_refused(gateway: Gateway, mock: MockUpstream) -> None:
    """Today keygate checked the last "model" (orjson keeps the last) and forwarded the bytes as
    sent, so an upstream that reads the first one, or matches names without regard to case, got
    a model the allowlist never saw."""
    key = gateway.create_key("allowlisted", "--allow-model", "gpt-4o*")["key"]
    messages = b'"messages": [{"role": "user", "content": "hi"}]'
    for raw, code, param in [
        (b'{"model": "o3", ' + messages + b', "model": "gpt-4o-mini"}', "duplicate_field", None),
        (b'{"model": "gpt-4o-mini", "MODEL": "o3", ' + messages + b"}", "duplicate_field", "model"),
        (b'{"model": "gpt-4o-mini", "Stream": true, ' + messages + b"}", "duplicate_field", "stream"),
        (b'{"model": "gpt-4o-mini", "stream": "true", ' + messages + b"}", "invalid_type", "stream"),
        (b'{"model": "gpt-4o-mini", "max_tokens": true, ' + messages + b"}", "invalid_type", "max_tokens"),
        (b'{"model": "gpt-4o-mini", "n": "9", ' + messages + b"}", "invalid_type", "n"),
    ]:
        r = _post(gateway.url, key, raw)
        assert r.status_code == 400, (raw, r.text)
        error = r.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert mock.requests == []


def test_the_json_forwarded_is_the_json_checked(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    raw = b'{ "model" : "gpt-4o-mini", "messages" : [ {"role": "user", "content": "a: \\u003a"} ], "temperature": 1E0 }'
    assert _post(gateway.url, client_key, raw).status_code == 200
    client = openai.OpenAI(base_url=gateway.url, api_key=client_key, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=0.5
    )
    first, second = mock.requests
    assert (
        first.body
        == orjson.dumps(orjson.loads(raw))
        == (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a: :"}],"temperature":1.0}')
    )
    assert second.body == orjson.dumps(second.json())  # the SDK's spaced JSON, re-serialised


def test_a_malformed_upload_is_a_400_and_the_gateway_keeps_serving(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    body = _form(
        ("form-data; name=model", b"whisper-1"), ('form-data; name="file"; filename="a.mp3"', b"ID3")
    )
    for ctype, content in [
        ("multipart/form-data", body),  # no boundary
        ("multipart/form-data; boundary=zz", body),  # another boundary
        ("multipart/form-data; boundary=b", body[:-12]),  # cut short
        ("multipart/form-data; boundary=b", body + b"--b\r\n"),  # more after the end
    ]:
        r = _post(gateway.url, client_key, content, "/audio/transcriptions", **{"content-type": ctype})
        assert r.status_code == 400, (ctype, r.text)
        assert (
            r.json()["error"]["code"] == "invalid_multipart"
            and r.json()["error"]["type"] == "invalid_request_error"
        )
    assert mock.requests == []
    r = _post(
        gateway.url,
        client_key,
        body,
        "/audio/transcriptions",
        **{"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 200 and mock.requests[-1].body == body  # a multipart body goes as sent


def test_checking_an_upload_never_holds_up_other_requests(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    """Today's regex scan of an upload took quadratic time in the event loop: 68 KiB of repeated
    ``name="model"`` lines stalled every request for 1.5 s. Here two adversarial uploads are in
    flight (56 KiB of such lines, which stalled the old scan for 2 s, and an 8 MiB one of
    near-boundaries that takes the parser tens of milliseconds) while other requests must each be
    answered within half a second."""
    # No CRLF after the closing boundary: the old regex then never matched and backtracked.
    lines = _form(
        ("form-data; name=model", b"whisper-1"),
        ('form-data; name="file"; filename="a"', b'name="model"\r\n' * 4000),
    )[:-2]
    near = _form(
        ("form-data; name=model", b"whisper-1"),
        ('form-data; name="file"; filename="a"', b"\r\n--" * (2 << 20)),
    )
    ctype = {"content-type": "multipart/form-data; boundary=b", "authorization": f"Bearer {client_key}"}
    auth = {"authorization": f"Bearer {client_key}"}

    async def run() -> tuple[list[float], list[int]]:
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=30) as big,
            httpx.AsyncClient(base_url=gateway.url, timeout=2) as small,
        ):
            uploads = [
                asyncio.ensure_future(big.post("/audio/transcriptions", content=body, headers=ctype))
                for body in (lines, near)
            ]
            latencies = []
            while not all(u.done() for u in uploads) or len(latencies) < 5:
                started = time.monotonic()
                r = await small.get("/models", headers=auth)
                assert r.status_code == 200
                latencies.append(time.monotonic() - started)
            return latencies, [(await u).status_code for u in uploads]

    latencies, statuses = asyncio.run(run())
    assert statuses == [200, 200]
    assert max(latencies) < 0.5, f"a request waited {max(latencies):.2f} s"
