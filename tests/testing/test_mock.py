"""The mock OpenAI upstream, exercised with the official openai SDK and httpx as clients."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from keygate.testing import DEFAULT_API_KEY, MockUpstream
from keygate.testing.mock import _url_host

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
MESSAGES: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "say hello to me"}]},
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream() as mock:
        yield mock


@pytest.fixture(scope="module")
def raw_http(upstream: MockUpstream) -> Iterator[httpx.Client]:
    # One client for the module: building one per call (TLS context and all) costs ~50 ms.
    with httpx.Client(base_url=upstream.url, headers=AUTH) as client:
        yield client


@pytest.fixture(autouse=True)
def _fresh(upstream: MockUpstream) -> None:
    upstream.reset()
    upstream.set_api_keys([DEFAULT_API_KEY])


@pytest.fixture(scope="module")
def client(upstream: MockUpstream) -> Iterator[OpenAI]:
    with OpenAI(base_url=upstream.url, api_key=DEFAULT_API_KEY, max_retries=0) as sdk:
        yield sdk


def sse_payloads(response: httpx.Response) -> list[Any]:
    return [
        line[len("data: ") :] if line == "data: [DONE]" else json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --- routes, through the official SDK -------------------------------------------------------------


def test_chat_completion(client: OpenAI, upstream: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o"
    assert completion.choices[0].message.content == "Hello from mock"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (6, 3)
    assert completion.usage.total_tokens == 9
    headers = raw.headers
    assert headers["x-request-id"].startswith("req_")
    assert headers["openai-organization"] == "org-mock"
    assert headers["openai-project"] == "proj_mock"
    assert headers["set-cookie"] == "__cf_bm=mock; path=/"
    assert headers["connection"] == "keep-alive"
    for name in ("openai-processing-ms", "x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens"):
        assert name in headers
    (request,) = upstream.requests
    assert (request.method, request.path, request.query) == ("POST", "/v1/chat/completions", "")
    assert request.json()["messages"] == MESSAGES


def test_chat_completion_token_limit_truncates(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=2)
    assert completion.choices[0].message.content == "Hello from"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 2


def test_chat_stream_without_usage(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from mock"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(chunks) == 5
    assert all(c.usage is None for c in chunks)


def test_chat_stream_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (6, 3, 9)
    assert all(c.usage is None and len(c.choices) == 1 for c in content)


def test_chat_stream_wire_format(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    response = raw_http.post("/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    events = sse_payloads(response)
    assert events[-1] == "[DONE]"
    assert all("usage" in e and e["usage"] is None for e in events[:-2])
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] == 9
    body["stream_options"] = {"include_usage": False}
    plain = sse_payloads(raw_http.post("/chat/completions", json=body))
    assert all("usage" not in e for e in plain[:-1])


def test_completions(client: OpenAI) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Hello from mock"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "Hello from mock"
    assert all(c.usage is None for c in chunks)
    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="x", stream=True, stream_options={"include_usage": True}
    )
    last = list(stream)[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 3


def test_embeddings_base64_and_float_agree(client: OpenAI, upstream: MockUpstream) -> None:
    default = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    assert upstream.requests[-1].json()["encoding_format"] == "base64"  # the SDK's default
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta gamma"], encoding_format="float"
    )
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert [len(d.embedding) for d in floats.data] == [8, 8]
    assert [d.index for d in floats.data] == [0, 1]
    assert default.usage.prompt_tokens == default.usage.total_tokens == 3
    single = client.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert single.data[0].embedding == floats.data[0].embedding


def test_embeddings_base64_wire_format(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    body = {"model": "e", "input": "alpha", "encoding_format": "base64"}
    encoded = raw_http.post("/embeddings", json=body).json()["data"][0]
    assert len(struct.unpack("<8f", base64.b64decode(encoded["embedding"]))) == 8


def test_models(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"} <= set(ids)
    assert client.models.retrieve("gpt-4o").owned_by == "system"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_responses(client: OpenAI) -> None:
    response = client.responses.create(model="gpt-4o", input="hi there", instructions="be nice")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "Hello from mock"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        4,
        3,
        7,
    )
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream(client: OpenAI, upstream: MockUpstream, raw_http: httpx.Client) -> None:
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 3
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == "Hello from mock"
    assert completed.response.usage is not None and completed.response.usage.total_tokens == 4
    with client.responses.stream(model="gpt-4o", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        assert stream.get_final_response().output_text == "Hello from mock" == "".join(deltas)
    wire = raw_http.post("/responses", json={"model": "m", "stream": True})
    assert wire.text.startswith("event: response.created\ndata: {")
    assert "[DONE]" not in wire.text


def test_moderations_images_audio(client: OpenAI, upstream: MockUpstream, raw_http: httpx.Client) -> None:
    moderation = client.moderations.create(input=["a", "b"])
    assert [r.flagged for r in moderation.results] == [False, False]
    assert moderation.results[0].categories.self_harm is False
    assert client.images.generate(prompt="cat", model="dall-e-3").data[0].url
    image = client.images.generate(prompt="cat", response_format="b64_json", n=2)
    assert image.data is not None and len(image.data) == 2
    assert base64.b64decode(image.data[0].b64_json or "").startswith(b"\x89PNG")
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert speech.response.headers["content-type"] == "audio/mpeg"
    assert speech.content.startswith(b"ID3")
    transcript = client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"mp3-bytes"))
    assert transcript.text == "hello from mock"
    recorded = upstream.requests[-1]
    assert recorded.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'filename="a.mp3"' in recorded.body and b"mp3-bytes" in recorded.body
    # translations are deprecated in the SDK, so post the multipart form by hand
    translation = raw_http.post(
        "/audio/translations", files={"file": ("a.mp3", b"x")}, data={"model": "whisper-1"}
    )
    assert translation.json() == {"text": "hello from mock"}
    assert raw_http.post("/audio/translations", json={"model": "whisper-1"}).status_code == 400


def test_async_client(upstream: MockUpstream) -> None:
    async def scenario() -> None:
        async with AsyncOpenAI(base_url=upstream.url, api_key=DEFAULT_API_KEY, max_retries=0) as sdk:
            completion = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert completion.choices[0].message.content == "Hello from mock"
            stream = await sdk.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            chunks = [chunk async for chunk in stream]
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 9
            response = await sdk.responses.create(model="gpt-4o", input="x")
            assert response.output_text == "Hello from mock"
            events = [
                e.type async for e in await sdk.responses.create(model="gpt-4o", input="x", stream=True)
            ]
            assert events[-1] == "response.completed"
            embeddings = await sdk.embeddings.create(model="text-embedding-3-small", input="x")
            assert len(embeddings.data[0].embedding) == 8
            with pytest.raises(openai.AuthenticationError):
                await sdk.with_options(api_key="sk-wrong").models.list()

    asyncio.run(scenario())


# --- authentication, errors and recording -----------------------------------------------------------


def test_wrong_key_is_echoed_in_full(upstream: MockUpstream) -> None:
    with (
        OpenAI(base_url=upstream.url, api_key="sk-not-the-right-key", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        sdk.models.list()
    assert caught.value.body == {
        "message": "Incorrect API key provided: sk-not-the-right-key. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    assert len(upstream.requests) == 1


def test_missing_key_and_set_api_keys(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    request = raw_http.build_request("GET", "/models")
    del request.headers["authorization"]
    missing = raw_http.send(request)
    assert missing.status_code == 401
    assert missing.json()["error"]["message"].startswith("You didn't provide an API key.")
    upstream.set_api_keys(["sk-a", "sk-b"])
    assert raw_http.get("/models", headers={"Authorization": "Bearer sk-b"}).status_code == 200
    assert raw_http.get("/models").status_code == 401


def test_unknown_route_and_bad_bodies(upstream: MockUpstream, client: OpenAI, raw_http: httpx.Client) -> None:
    unknown = raw_http.post("/nope?x=1", json={})
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/nope)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert raw_http.get("/assistants").status_code == 404
    bad_json = raw_http.post("/chat/completions", content=b"{nope")
    assert bad_json.status_code == 400 and "could not parse the JSON" in bad_json.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="", messages=MESSAGES)


def test_recording(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    headers = [("X-Custom", "first"), ("x-custom", "second"), ("X-Trace", "t")]
    raw_http.get("/models?limit=2&after=x", headers=headers)
    (request,) = upstream.requests
    assert (request.method, request.path, request.query, request.body) == (
        "GET",
        "/v1/models",
        "limit=2&after=x",
        b"",
    )
    assert request.headers["x-custom"] == "second"
    assert request.headers["authorization"] == AUTH["Authorization"]
    names = [name for name, _ in request.raw_headers]
    assert names.index("X-Custom") < names.index("x-custom") < names.index("X-Trace")
    snapshot = upstream.requests
    raw_http.get("/models")
    assert len(snapshot) == 1 and len(upstream.requests) == 2


def test_chunked_request_body_is_read(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o", '
        yield b'"messages": [{"role": "user", "content": "a b"}]}'

    response = raw_http.post("/chat/completions", content=body())
    assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == 2
    request = upstream.requests[-1]
    assert request.headers["transfer-encoding"] == "chunked"
    assert request.json()["messages"][0]["content"] == "a b"


def test_keep_alive_across_plain_and_streamed_responses(upstream: MockUpstream) -> None:
    connection = HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    stream_body = json.dumps({"model": "m", "messages": MESSAGES, "stream": True})
    sockets = []
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", stream_body),
    ] * 2:
        connection.request(method, path, body=body, headers=AUTH)
        response = connection.getresponse()
        assert response.status == 200 and response.read() and not response.will_close
        sockets.append(connection.sock)
    assert len({id(s) for s in sockets}) == 1
    connection.close()


# --- failure modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("401", openai.AuthenticationError),
        ("403", openai.PermissionDeniedError),
        ("429", openai.RateLimitError),
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
    ],
)
def test_status_failures(client: OpenAI, upstream: MockUpstream, mode: str, error: type[Exception]) -> None:
    upstream.fail_next(mode, retry_after=7)
    with pytest.raises(error) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.status_code == int(mode)
    assert isinstance(caught.value.body, dict) and caught.value.body["message"]
    if mode in ("401", "403"):
        assert DEFAULT_API_KEY in caught.value.body["message"]
    if mode == "429":
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert caught.value.code == "rate_limit_exceeded"
    assert len(upstream.requests) == 1
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_fail_next_count_then_fail_always(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    def status() -> int:
        return raw_http.get("/models").status_code

    upstream.fail_next("500", count=2)
    assert [status(), status(), status()] == [500, 500, 200]
    upstream.fail_always("503")
    upstream.fail_next("429")
    assert [status(), status(), status()] == [429, 503, 503]
    upstream.fail_always(None)
    assert status() == 200
    upstream.fail_always("500")
    upstream.reset()
    assert status() == 200 and len(upstream.requests) == 1


def test_failure_arguments_are_checked(upstream: MockUpstream) -> None:
    with pytest.raises(ValueError, match="unknown failure mode"):
        upstream.fail_next("418")
    with pytest.raises(ValueError, match="delay"):
        upstream.fail_next("slow")
    with pytest.raises(ValueError, match="count"):
        upstream.fail_next("500", count=0)
    with pytest.raises(ValueError, match="must not be negative"):
        upstream.fail_next("429", retry_after=-1)
    with pytest.raises(ValueError, match="must not be negative"):
        upstream.fail_always("500", delay=-0.1)
    with pytest.raises(ValueError, match="unknown failure mode"):
        upstream.fail_always("418")


def test_slow_response_times_out(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    upstream.fail_next("slow", delay=0.5)
    with OpenAI(base_url=upstream.url, api_key=DEFAULT_API_KEY, max_retries=0, timeout=0.15) as sdk:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            sdk.models.list()
        assert time.monotonic() - started < 0.45
        assert sdk.models.list().data  # the next request is served normally
    upstream.fail_next("slow", delay=0.1)
    started = time.monotonic()
    assert raw_http.get("/models").status_code == 200
    assert time.monotonic() - started >= 0.1


def test_slow_stream_paces_events(client: OpenAI, upstream: MockUpstream) -> None:
    upstream.fail_next("slow", delay=0.05)
    started = time.monotonic()
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert len(chunks) == 5 and time.monotonic() - started >= 0.3  # 6 events incl. [DONE]
    assert upstream.stream_aborts == 0


def test_client_leaving_a_slow_stream_is_detected(upstream: MockUpstream) -> None:
    upstream.fail_next("slow", delay=0.3)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(base_url=upstream.url, headers=AUTH) as own,
        own.stream("POST", "/chat/completions", json=body) as response,
    ):
        first = next(response.iter_lines())
        assert first.startswith("data: ")
    started = time.monotonic()
    assert wait_until(lambda: upstream.stream_aborts == 1)
    assert time.monotonic() - started < 0.25  # noticed while waiting, not at the next write


def test_disconnect(client: OpenAI, upstream: MockUpstream) -> None:
    upstream.fail_next("disconnect")
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    assert len(upstream.requests) == 1
    assert client.models.list().data


def test_disconnect_mid_stream(client: OpenAI, upstream: MockUpstream) -> None:
    upstream.fail_next("disconnect_mid_stream", delay=0.05)  # delay paces the events here
    received = []
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert [c.choices[0].delta.content for c in received] == ["", "Hello"]
    assert time.monotonic() - started >= 0.1
    upstream.fail_next("disconnect_mid_stream")
    with pytest.raises(openai.APIConnectionError):
        client.models.list()  # not a stream: cut before any response
    assert client.models.list().data


def test_failure_with_delay(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    upstream.fail_next("503", delay=0.1)
    started = time.monotonic()
    assert raw_http.get("/models").status_code == 503
    assert time.monotonic() - started >= 0.1


# --- lifecycle --------------------------------------------------------------------------------------


def test_lifecycle_and_stop_cuts_idle_connections() -> None:
    mock = MockUpstream(api_keys=["k"])
    with pytest.raises(RuntimeError):
        _ = mock.url
    with mock.start() as started, httpx.Client(headers={"Authorization": "Bearer k"}) as pooled:
        url = mock.url
        assert started is mock and url == f"http://127.0.0.1:{mock.port}/v1"
        assert pooled.get(url + "/models").status_code == 200
        mock.stop()
        with pytest.raises(httpx.TransportError):
            pooled.get(url + "/models")
    mock.stop()  # idempotent
    with mock, pytest.raises(RuntimeError, match="already running"):
        mock.start()
    with pytest.raises(RuntimeError, match="not running"):
        _ = mock.port


@pytest.mark.parametrize(
    ("host", "url_host"),
    [
        ("0.0.0.0", "127.0.0.1"),  # noqa: S104
        ("::", "[::1]"),
        ("::1", "[::1]"),
        ("127.0.0.2", "127.0.0.2"),
        ("", "127.0.0.1"),
        ("localhost", "localhost"),
    ],
)
def test_url_host(host: str, url_host: str) -> None:
    assert _url_host(host) == url_host


def _raw_request(upstream: MockUpstream, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"short"',
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX",
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_unreadable_bodies_are_400_and_recorded(upstream: MockUpstream, request_bytes: bytes) -> None:
    answer = _raw_request(upstream, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400") and b"could not be read" in answer
    assert answer.lower().count(b"connection: close") == 1
    (seen,) = upstream.requests
    assert (seen.path, seen.body) == ("/v1/embeddings", b"")


def test_chunked_bodies_with_extensions_and_trailers(upstream: MockUpstream) -> None:
    auth = f"Authorization: Bearer {DEFAULT_API_KEY}\r\n".encode()
    body = b'{"model": "m", "input": "a b"}'
    chunked = (
        b"4;ext=1\r\n"
        + body[:4]
        + b"\r\n"
        + f"{len(body) - 4:x}\r\n".encode()
        + body[4:]
        + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    answer = _raw_request(
        upstream,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + auth
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked,
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert upstream.requests[0].body == body


def test_command_line() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "keygate.testing", "--port", "0", "--api-key", "sk-cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        response = httpx.get(url + "/models", headers={"Authorization": "Bearer sk-cli"})
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)  # Ctrl-C: a clean exit
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait(timeout=5)


def test_reply_next_scripts_exact_replies(upstream: MockUpstream, raw_http: httpx.Client) -> None:
    upstream.reset()
    upstream.reply_next(403, {"error": {"code": "model_not_found"}}, headers={"x-extra": "1"})
    upstream.reply_next(events=[{"n": 1}, "data: [DONE]"])
    first = raw_http.post(upstream.url + "/chat/completions", json={})
    assert (first.status_code, first.json(), first.headers["x-extra"]) == (
        403,
        {"error": {"code": "model_not_found"}},
        "1",
    )
    second = raw_http.post(upstream.url + "/chat/completions", json={})
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.text == 'data: {"n":1}\n\ndata: [DONE]\n\n'
    # Scripted replies are used up; the next request is answered normally (no model: 400).
    assert raw_http.post(upstream.url + "/chat/completions", json={}).status_code == 400
    assert len(upstream.requests) == 3
    with pytest.raises(ValueError):
        upstream.reply_next(count=0)
