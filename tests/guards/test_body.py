"""The body guard in process: size limits (declared and counted), content types, chunked bodies,
JSON checks, the model and stream flags, asking for the usage chunk of a stream, stalled and
vanished clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from keygate.context import Context
from keygate.errors import ClientGone, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from keygate.guards.body import BodyReader, Deadlines
from keygate.testing import context, run_request

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
    assert (
        isinstance(err, InvalidRequest)
        and err.param == "model"
        and err.message == "'model' must be a string."
    )


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
        ("/v1/chat/completions", "true", False),  # only the JSON true
        ("/v1/chat/completions", 1, False),
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
        ("junk", {"include_usage": True}, False),
    ],
)
def test_a_stream_is_asked_for_its_usage_chunk(options: object, sent: dict[str, Any], wants: bool) -> None:
    body = {**CHAT, "stream": True}
    if options is not None:
        body["stream_options"] = options
    ctx = _ctx(json=body)
    assert _read(BodyReader(1000), ctx) is None
    forwarded = orjson.loads(ctx.body)
    assert forwarded["stream_options"] == sent and forwarded == ctx.json
    # Whether the client itself asked for the usage chunk (else keygate filters it out again).
    assert ctx.client_wants_usage is wants


def test_only_routes_with_the_usage_option_are_asked() -> None:
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    ctx = _ctx("/v1/responses", json=body)  # reports usage in its stream anyway
    assert _read(BodyReader(1000), ctx) is None
    assert "stream_options" not in orjson.loads(ctx.body) and ctx.client_wants_usage
    completions = _ctx("/v1/completions", json={"model": "m", "prompt": "hi", "stream": True})
    assert _read(BodyReader(1000), completions) is None
    assert orjson.loads(completions.body)["stream_options"] == {"include_usage": True}
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
