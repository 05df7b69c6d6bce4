"""The data plane (keygate.app) through a real keygate in this process: the official SDK against
the mock upstream, and what a hostile or broken world does: bad input, failing upstreams, header
tricks, disconnects, and guards that fail."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from keygate import server
from keygate.app import parse_peer
from keygate.chain import Guard
from keygate.context import Context
from keygate.errors import KeygateError
from keygate.testing import MockUpstream

from .helpers import UPSTREAM_SECRET, Gateway, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def sdk(gateway: Gateway, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key=key, max_retries=0, timeout=10, **kw)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def raw(gateway: Gateway, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes (no client-side normalisation) and return everything the server answers."""
    with socket.create_connection((gateway.host, gateway.port), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                    if length and len(body) >= int(length[0].split(b":")[1]):
                        break
        except TimeoutError:
            pass
        return out


# --- the official SDK, unchanged ------------------------------------------------------------------


def test_chat_completion(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    reply = sdk(gateway, client_key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello to me"}]
    )
    assert reply.choices[0].message.content == "Hello from mock"
    assert reply.usage is not None and reply.usage.prompt_tokens == 4
    (seen,) = mock.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert seen.json()["model"] == "gpt-4o-mini"


def test_streamed_chat_hides_injected_usage_chunk(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    stream = sdk(gateway, client_key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.replace(" ", "") == "Hellofrommock"
    assert all(c.choices for c in chunks), "the usage chunk keygate asked for must not reach this client"
    assert mock.requests[0].json()["stream_options"] == {"include_usage": True}
    rid = stream.response.headers["x-keygate-request-id"]
    entry = gateway.wait_entry(lambda e: e["request_id"] == rid)
    assert entry["stream"] is True
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (3, 3)


def test_streamed_chat_with_usage_requested(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    stream = sdk(gateway, client_key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2
    assert mock.requests[0].json()["stream_options"] == {"include_usage": True}


def test_async_client_stream_and_not(gateway: Gateway, client_key: str) -> None:
    async def go() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=gateway.url, api_key=client_key, max_retries=0)
        whole = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
        parts = []
        async for chunk in await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        await client.close()
        return whole.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(go())
    assert whole == "Hello from mock"
    assert streamed.replace(" ", "") == "Hellofrommock"


def test_other_routes(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    client = sdk(gateway, client_key)
    assert client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi").choices
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert any(m.id == "gpt-4o" for m in client.models.list())
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    assert client.responses.create(model="gpt-4o", input="hi").output_text == "Hello from mock"
    assert client.moderations.create(input="hi").results
    assert client.images.generate(model="dall-e-3", prompt="a cat").data
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert speech.content
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"ID3fake", "audio/mpeg"))
    assert text.text
    paths = [r.path for r in mock.requests]
    assert paths == [
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/gpt-4o",
        "/v1/responses",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
    ]


def test_usage_of_whole_answers_is_recorded(gateway: Gateway, client_key: str) -> None:
    client = sdk(gateway, client_key)
    raw_reply = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="a b c")
    rid = raw_reply.headers["x-keygate-request-id"]
    entry = gateway.wait_entry(lambda e: e["request_id"] == rid)
    assert (entry["route"], entry["prompt_tokens"], entry["stream"]) == ("embeddings", 3, False)
    # An unmetered route records no tokens, whatever its answer holds.
    raw_reply = client.moderations.with_raw_response.create(input="one two three four")
    rid = raw_reply.headers["x-keygate-request-id"]
    entry = gateway.wait_entry(lambda e: e["request_id"] == rid)
    assert (entry["route"], entry["prompt_tokens"], entry["completion_tokens"]) == ("moderations", 0, 0)


def test_responses_stream_usage_recorded(gateway: Gateway, client_key: str) -> None:
    stream = sdk(gateway, client_key).responses.create(model="gpt-4o", input="count these words", stream=True)
    events = list(stream)
    assert events[-1].type == "response.completed"
    rid = stream.response.headers["x-keygate-request-id"]
    entry = gateway.wait_entry(lambda e: e["request_id"] == rid)
    assert entry["prompt_tokens"] == 3 and entry["stream"] is True


def test_wrong_key_is_authentication_error(gateway: Gateway, mock: MockUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "kg_" + "A" * 38).models.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, UPSTREAM_SECRET).models.list()
    assert mock.requests == []


def test_revoke_takes_effect_on_next_request(gateway: Gateway, mock: MockUpstream) -> None:
    created = gateway.create_key("to-revoke")
    client = sdk(gateway, created["key"])
    client.models.list()
    gateway.cli("keys", "revoke", created["id"])
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.models.list()
    assert len(mock.requests) == 1


# --- headers --------------------------------------------------------------------------------------


def test_request_headers_are_allowlisted(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    r = httpx.post(
        f"{gateway.url}/chat/completions",
        json=CHAT,
        headers={
            **bearer(client_key),
            "Cookie": "session=abc",
            "X-Forwarded-For": "10.1.2.3",
            "X-Real-IP": "10.1.2.3",
            "Forwarded": "for=10.1.2.3",
            "OpenAI-Organization": "org-attacker",
            "OpenAI-Project": "proj_attacker",
            "X-Custom-Secret": "internal-data",
            "Upgrade": "h2c",
            "TE": "trailers",
            "OpenAI-Beta": "assistants=v2",
            "Idempotency-Key": "idem-1",
        },
    )
    assert r.status_code == 200
    (seen,) = mock.requests
    assert set(seen.headers) - {"content-length", "host", "accept-encoding", "user-agent"} == {
        "authorization",
        "content-type",
        "accept",
        "openai-beta",
        "idempotency-key",
    }
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert (seen.headers["openai-beta"], seen.headers["idempotency-key"]) == ("assistants=v2", "idem-1")


def test_response_headers_are_allowlisted(gateway: Gateway, client_key: str) -> None:
    r = httpx.post(f"{gateway.url}/chat/completions", json=CHAT, headers=bearer(client_key))
    names = {k.lower() for k in r.headers}
    assert "set-cookie" not in names and "openai-organization" not in names and "openai-project" not in names
    assert {"x-request-id", "x-ratelimit-remaining-requests", "content-type"} <= names
    assert r.headers["x-keygate-request-id"].startswith("kg-")
    assert "strict-transport-security" not in names  # plain http: no HSTS


def test_request_ids_are_unique_and_on_errors_too(gateway: Gateway, client_key: str) -> None:
    ids = {httpx.get(f"{gateway.url}/models", headers=bearer(client_key)).headers["x-keygate-request-id"]}
    ids.add(httpx.get(f"{gateway.url}/models").headers["x-keygate-request-id"])  # 401
    ids.add(httpx.get(f"{gateway.base}/v1/files", headers=bearer(client_key)).headers["x-keygate-request-id"])
    assert len(ids) == 3


def test_a_routes_own_query_parameters_are_forwarded_as_keygate_writes_them(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    made = gateway.create_key("query")
    client_key = made["key"]
    gateway.cli("objects", "assign", "resp_abc", "--key", made["id"])  # (a response keygate did not make)
    client = sdk(gateway, client_key)
    # The mock has no such response: its own 404 (any 4xx but 401/403/429) is relayed, not retried.
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(
            "resp_abc",
            limit=2,
            order="asc",
            include=["file_search_call.results", "message.input_image.image_url"],
        )
    r = httpx.get(
        f"{gateway.url}/responses/resp_abc?stream=false&include=reasoning.encrypted_content&starting_after=%33",
        headers=bearer(client_key),
    )
    assert r.status_code == 404 and "No such" in r.json()["error"]["message"]  # the mock's own
    assert [(seen.path, seen.query) for seen in mock.requests] == [
        (
            "/v1/responses/resp_abc/input_items",
            # in the order the SDK wrote them, include[] as the array it is
            "include%5B%5D=file_search_call.results&include%5B%5D=message.input_image.image_url"
            "&limit=2&order=asc",
        ),
        ("/v1/responses/resp_abc", "stream=false&include=reasoning.encrypted_content&starting_after=3"),
    ]


@pytest.mark.parametrize(
    ("target", "code", "param"),
    [
        ("/models?api_key={key}", "unknown_parameter", "api_key"),  # the client's key, never forwarded
        ("/models?limit=2", "unknown_parameter", "limit"),  # /v1/models takes no parameters at all
        ("/models/gpt-4o?x=1", "unknown_parameter", "x"),
        ("/responses/resp_1/input_items?limit=1&limit=100", "duplicate_parameter", "limit"),
        ("/responses/resp_1/input_items?after=a%26api_key%3D{key}", "invalid_value", "after"),
        ("/responses/resp_1/input_items?order=random", "invalid_value", "order"),
        ("/responses/resp_1/input_items?limit", "invalid_value", "limit"),
        ("/responses/resp_1?stream=1", "invalid_value", "stream"),
        ("/responses/resp_1?{key}=1", "unknown_parameter", None),  # a name that may be a secret: not named
    ],
)
def test_a_query_parameter_the_route_does_not_define_is_a_400(
    gateway: Gateway, client_key: str, mock: MockUpstream, target: str, code: str, param: str | None
) -> None:
    r = httpx.get(gateway.url + target.format(key=client_key), headers=bearer(client_key))
    assert r.status_code == 400
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param)
    assert client_key not in r.text
    assert mock.requests == []


def test_a_post_route_takes_no_query(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    r = httpx.post(
        f"{gateway.url}/chat/completions?api-version=2024-10-21", json=CHAT, headers=bearer(client_key)
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    assert mock.requests == []
    # An empty query (a bare "?", or only separators) is no query.
    r = httpx.post(f"{gateway.url}/chat/completions?&", json=CHAT, headers=bearer(client_key))
    assert r.status_code == 200 and mock.requests[0].query == ""


# --- failing upstreams ----------------------------------------------------------------------------


def test_upstream_401_never_passes_through(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("401")
    with pytest.raises(openai.InternalServerError) as info:
        sdk(gateway, client_key).models.list()
    assert info.value.status_code == 502
    assert UPSTREAM_SECRET not in info.value.response.text
    assert info.value.body["code"] == "upstream_auth_failed"  # type: ignore[index]
    stderr = gateway.stderr_path.read_text()
    assert "upstream rejected the gateway's API key" in stderr
    # A 403 that refuses the key itself is the same.
    mock.reply_next(403, {"error": {"message": f"key {UPSTREAM_SECRET} is dead", "code": "invalid_api_key"}})
    r = httpx.get(f"{gateway.url}/models", headers=bearer(client_key))
    assert r.status_code == 502 and UPSTREAM_SECRET not in r.text


def test_upstream_403_for_the_request_is_a_403_without_the_upstreams_text(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    mock.fail_next("403")  # the mock's 403: a restricted key without a scope, echoing the key
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk(gateway, client_key).models.list()
    assert info.value.status_code == 403 and UPSTREAM_SECRET not in info.value.response.text
    assert info.value.body == {  # OpenAI's shape; keygate's message, the upstream's code
        "message": "The gateway's upstream key is not permitted this operation. "
        "(upstream error code: insufficient_permissions)",
        "type": "permission_denied",
        "param": None,
        "code": "insufficient_permissions",
    }
    assert info.value.response.headers["x-request-id"].startswith("req_")  # the upstream's, for support


def test_upstream_401_on_stream(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("401")
    r = httpx.post(
        f"{gateway.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(client_key)
    )
    assert r.status_code == 502 and UPSTREAM_SECRET not in r.text


def test_upstream_errors_on_a_stream_are_relayed_whole(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    mock.fail_next("429", retry_after=3)
    r = httpx.post(
        f"{gateway.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(client_key)
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    mock.fail_next("500")
    r = httpx.post(
        f"{gateway.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(client_key)
    )
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert len(mock.requests) == 2  # one key: nothing to retry on


def test_upstream_429_passes_retry_after(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("429", retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        sdk(gateway, client_key).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert info.value.response.headers["retry-after"] == "7"


def test_upstream_500_and_503(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("500")
    with pytest.raises(openai.InternalServerError) as info:
        sdk(gateway, client_key).models.list()
    assert info.value.status_code == 500
    mock.fail_next("503")
    with pytest.raises(openai.InternalServerError) as info:
        sdk(gateway, client_key).models.list()
    assert info.value.status_code == 503


def test_upstream_disconnect_is_502(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("disconnect")
    r = httpx.get(f"{gateway.url}/models", headers=bearer(client_key))
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_error"


def test_upstream_drops_mid_stream(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("disconnect_mid_stream", delay=0.05)
    with httpx.stream(
        "POST", f"{gateway.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(client_key)
    ) as r:
        body = r.read()
    assert r.status_code == 200
    assert b'"upstream_connection_error"' in body.splitlines()[-2]
    entry = gateway.wait_entry(lambda e: e["request_id"] == r.headers["x-keygate-request-id"])
    assert (entry["status"], entry["error_code"]) == (200, "upstream_connection_error")


def test_timeouts_and_refused_connections(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url, extra={"upstream_timeout": 0.5}) as gw:
        key = gw.create_key()["key"]
        mock.fail_next("slow", delay=2.0)
        with pytest.raises(openai.APIStatusError) as info:
            sdk(gw, key).models.list()
        assert info.value.status_code == 504
        # The gateway keeps serving.
        assert sdk(gw, key).models.list()
    closed = f"http://127.0.0.1:{free_port()}/v1"
    (tmp_path / "refused").mkdir()
    with Gateway(tmp_path / "refused", closed) as gw:
        key = gw.create_key()["key"]
        with pytest.raises(openai.APIStatusError) as info:
            sdk(gw, key).models.list()
        assert info.value.status_code == 502
        assert info.value.body["code"] == "upstream_connect_failed"  # type: ignore[index]


class ScriptedUpstream:
    """An upstream on loopback that answers each request with the next scripted raw reply (given
    the request's bearer key), for answers the mock never gives."""

    def __init__(self) -> None:
        self.replies: list[Callable[[str], bytes]] = []
        self.seen: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                key = (self.headers.get("authorization") or "")[len("Bearer ") :]
                outer.seen.append(self.path)
                self.wfile.write(outer.replies.pop(0)(key))
                self.wfile.flush()
                self.close_connection = True

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[ScriptedUpstream, Gateway]]:
    up = ScriptedUpstream()
    try:
        with Gateway(tmp_path, up.url) as gw:
            yield up, gw
    finally:
        up.close()


def _json_reply(status: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n"
    return head.encode() + b"connection: close\r\nset-cookie: a=b\r\n\r\n" + body


def test_upstream_error_bodies_never_echo_the_upstream_key(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    up, gw = scripted
    key = gw.create_key()["key"]
    echo = lambda k: _json_reply(400, b'{"error":{"message":"bad request with key ' + k.encode() + b'"}}')  # noqa: E731
    up.replies += [echo, echo]
    r = httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers=bearer(key))
    assert r.status_code == 400
    assert UPSTREAM_SECRET not in r.text and "[redacted]" in r.text
    assert "set-cookie" not in r.headers
    # The same on a stream whose answer is an error instead of events.
    r = httpx.post(f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
    assert r.status_code == 400 and UPSTREAM_SECRET not in r.text and "[redacted]" in r.text


def test_a_stream_answer_cut_short_before_any_event_is_502(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    up, gw = scripted
    key = gw.create_key()["key"]
    up.replies.append(lambda k: _json_reply(200, b'{"object":', length=500))  # then the connection closes
    r = httpx.post(f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_connection_error"
    entry = gw.wait_entry(lambda e: e["request_id"] == r.headers["x-keygate-request-id"])
    assert (entry["status"], entry["error_code"]) == (502, "upstream_connection_error")


def test_a_non_event_stream_answer_is_relayed_whole_and_metered(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    up, gw = scripted
    key = gw.create_key()["key"]
    body = b'{"object":"chat.completion","usage":{"prompt_tokens":4,"completion_tokens":6}}'
    up.replies.append(lambda k: _json_reply(200, body))
    r = httpx.post(f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
    assert (r.status_code, r.content) == (200, body)
    entry = gw.wait_entry(lambda e: e["request_id"] == r.headers["x-keygate-request-id"])
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (4, 6)


def test_a_stream_whose_last_event_is_unterminated_still_reaches_the_client(
    scripted: tuple[ScriptedUpstream, Gateway],
) -> None:
    up, gw = scripted
    key = gw.create_key()["key"]
    events = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]'  # no final blank line
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    up.replies.append(lambda k: head + events)  # delimited by the end of the connection
    r = httpx.post(f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
    assert (r.status_code, r.content) == (200, events)


def test_keygate_rate_limit_headers_replace_the_upstreams(gateway: Gateway, mock: MockUpstream) -> None:
    key = gateway.create_key("limited", "--rpm", "1")["key"]
    ok = httpx.get(f"{gateway.url}/models", headers=bearer(key))
    assert ok.status_code == 200
    # The mock sends its own x-ratelimit-*-requests; the client sees keygate's counts instead, once.
    assert ok.headers.get_list("x-ratelimit-limit-requests") == ["1"]
    assert ok.headers.get_list("x-ratelimit-remaining-requests") == ["0"]
    assert "x-ratelimit-limit-tokens" in ok.headers  # the upstream's other counts still pass
    refused = httpx.get(f"{gateway.url}/models", headers=bearer(key))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers.get_list("x-ratelimit-limit-requests") == ["1"]
    assert refused.headers.get_list("x-ratelimit-remaining-requests") == ["0"]
    assert int(refused.headers["retry-after"]) >= 1
    assert len(mock.requests) == 1
    # An error after the limits passed carries keygate's counts too.
    key = gateway.create_key("limited-5", "--rpm", "5")["key"]
    mock.fail_next("disconnect")
    failed = httpx.get(f"{gateway.url}/models", headers=bearer(key))
    assert failed.status_code == 502
    assert failed.headers.get_list("x-ratelimit-limit-requests") == ["5"]
    assert failed.headers.get_list("x-ratelimit-remaining-requests") == ["4"]


def test_a_stream_to_an_upstream_without_keys_is_503(
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
        r = httpx.post(f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
        assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable"
        assert r.headers["content-type"] == "application/json"
        assert mock.requests == []


# --- upstream 403s: the request refused, or the key ---------------------------------------------

POOL_KEYS = {f"POOL_K{i}": f"sk-proj-POOL-key-{i}-{str(i) * 24}" for i in range(1, 5)}


@pytest.fixture
def pooled(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> Iterator[Gateway]:
    """A gateway whose upstream has three keys and a fallback upstream with a fourth."""
    mock.set_api_keys(POOL_KEYS.values())
    extra = {
        "upstreams": {
            "openai": {
                "base_url": upstream.url,
                "api_keys": ["${POOL_K1}", "${POOL_K2}", "${POOL_K3}"],
                "fallback": "spare",
            },
            "spare": {"base_url": upstream.url, "api_key": "${POOL_K4}"},
        }
    }
    with Gateway(tmp_path, upstream.url, extra=extra, env=POOL_KEYS) as gw:
        gw.secrets += POOL_KEYS.values()
        yield gw


def _bearers(mock: MockUpstream) -> list[str]:
    keys = {v: k for k, v in POOL_KEYS.items()}
    return [keys[r.headers["authorization"].removeprefix("Bearer ")] for r in mock.requests]


REQUEST_403S = [
    pytest.param(
        {
            "error": {
                "message": "Project `proj_Upstream42` does not have access to model `o1-pro`",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
        "model_not_found",
        id="model_not_found",
    ),
    pytest.param(
        {
            "error": {
                "code": "unsupported_country_region_territory",
                "message": "Country, region, or territory not supported",
                "param": None,
                "type": "request_forbidden",
            }
        },
        "unsupported_country_region_territory",
        id="region",
    ),
    pytest.param(
        b"<html><body>403 Forbidden: blocked by policy</body></html>", "upstream_forbidden", id="html"
    ),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("body", "code"), REQUEST_403S)
def test_an_upstream_403_for_the_request_is_answered_and_every_key_stays(
    pooled: Gateway, mock: MockUpstream, records: list[Any], body: Any, code: str, stream: bool
) -> None:
    key = pooled.create_key()["key"]
    mock.reply_next(403, body, count=10)  # as many as the old code would have spent keys on
    r = httpx.post(f"{pooled.url}/chat/completions", json={**CHAT, "stream": stream}, headers=bearer(key))
    assert r.status_code == 403
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("permission_denied", code)
    assert "proj_Upstream42" not in r.text and "<html>" not in r.text
    assert len(mock.requests) == 1  # not retried: not on another key, not on the fallback
    refused = [x for x in records if x.getMessage().startswith("upstream refused a request")]
    assert [(x.upstream, x.upstream_code) for x in refused] == [("openai", code)]
    assert not [x for x in records if x.name == "keygate.alert"]  # no key left the rotation
    mock.reset()
    for _ in range(6):
        assert httpx.post(f"{pooled.url}/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
    assert sorted(set(_bearers(mock))) == ["POOL_K1", "POOL_K2", "POOL_K3"]  # all three, no fallback


def test_an_upstream_403_refusing_the_key_takes_it_out_and_retries(
    pooled: Gateway, mock: MockUpstream
) -> None:
    key = pooled.create_key()["key"]
    dead = {
        "error": {
            "message": "This key is associated with a deactivated account.",
            "code": "account_deactivated",
        }
    }
    mock.reply_next(403, dead)
    r = httpx.post(f"{pooled.url}/chat/completions", json=CHAT, headers=bearer(key))
    assert r.status_code == 200  # answered on the next key
    out, retried = _bearers(mock)
    assert out != retried
    mock.reset()
    for _ in range(4):
        httpx.post(f"{pooled.url}/chat/completions", json=CHAT, headers=bearer(key))
    assert out not in _bearers(mock) and len(set(_bearers(mock))) == 2


# --- request headers that can be read two ways ----------------------------------------------------


def _get_models(gateway: Gateway, *header_lines: str) -> tuple[int, dict[str, Any]]:
    lines = "".join(f"{h}\r\n" for h in header_lines)
    answer = raw(gateway, f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


@pytest.mark.parametrize(
    ("lines", "code", "param"),
    [
        # the valid key last: the one a dict of the headers kept, so this once authenticated
        (
            ["Authorization: Bearer kg_other", "Authorization: Bearer {key}"],
            "duplicate_header",
            "authorization",
        ),
        (
            ["Authorization: Bearer {key}", "Authorization: Bearer kg_other"],
            "duplicate_header",
            "authorization",
        ),
        (["Authorization: Bearer {key}", "X-Api-Key: kg_other"], "conflicting_credentials", "x-api-key"),
        (["Authorization: Bearer {key}", "Api-Key: kg_other"], "conflicting_credentials", "api-key"),
        (
            ["Authorization: Bearer {key}", "Content-Type: a/b", "Content-Type: c/d"],
            "duplicate_header",
            "content-type",
        ),
        (["Authorization: Bearer {key}", "Host: y"], "duplicate_header", "host"),
    ],
)
def test_a_request_whose_headers_can_be_read_two_ways_is_a_400(
    gateway: Gateway, client_key: str, mock: MockUpstream, lines: list[str], code: str, param: str
) -> None:
    status, body = _get_models(gateway, *(line.format(key=client_key) for line in lines))
    assert status == 400
    assert (body["error"]["code"], body["error"]["param"]) == (code, param)
    assert client_key not in orjson.dumps(body).decode()
    assert mock.requests == []


def test_headers_that_agree_are_fine(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    # The same key in X-Api-Key too, and a repeated header keygate does not decide by.
    status, _ = _get_models(gateway, f"Authorization: Bearer {client_key}", f"X-Api-Key: {client_key}")
    assert status == 200
    status, _ = _get_models(gateway, f"Authorization: Bearer {client_key}", "Accept: a/b", "Accept: c/d")
    assert status == 200
    assert len(mock.requests) == 2
    # Two API-key headers and no Authorization: nothing to disagree with, and no key: a 401.
    assert _get_models(gateway, "X-Api-Key: kg_a", "Api-Key: kg_b")[0] == 401


# --- response headers ----------------------------------------------------------------------------


def test_response_header_values_are_scrubbed_and_unknown_rate_limit_names_dropped(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    mock.reply_next(
        200,
        {"object": "list", "data": []},
        headers={
            "x-ratelimit-debug": f"key={UPSTREAM_SECRET}",
            "x-ratelimit-limit-project-secret": UPSTREAM_SECRET,
            "openai-version": UPSTREAM_SECRET,
            "x-request-id": f"req_{UPSTREAM_SECRET}",
            "x-ratelimit-remaining-tokens": "77",
        },
    )
    answer = raw(
        gateway, f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client_key}\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200") and UPSTREAM_SECRET.encode() not in answer
    head = answer.partition(b"\r\n\r\n")[0].decode().lower()
    names = {line.split(":", 1)[0] for line in head.split("\r\n")[1:]}
    assert not names & {"x-ratelimit-debug", "x-ratelimit-limit-project-secret", "openai-version"}
    assert "x-request-id: req_[redacted]" in head and "x-ratelimit-remaining-tokens: 77" in head


def test_no_server_banner_on_any_answer(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    answers = [
        httpx.get(f"{gateway.url}/models", headers=bearer(client_key)),  # relayed
        httpx.get(f"{gateway.url}/models"),  # 401
        httpx.get(f"{gateway.base}/v1/assistants", headers=bearer(client_key)),  # 404
        httpx.post(
            f"{gateway.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(client_key)
        ),
        httpx.get(f"{gateway.admin_url}/healthz"),  # the admin listener
        httpx.get(f"{gateway.admin_url}/admin/keys"),  # its 401
        httpx.get(f"{gateway.admin_url}/nowhere"),  # its 404
    ]
    assert [r.status_code for r in answers] == [200, 401, 404, 200, 200, 401, 404]
    for r in answers:
        assert r.headers.get_list("server") in ([], [""]), r.url  # granian's would say "granian"


# --- clients that misbehave -----------------------------------------------------------------------


def test_client_disconnect_mid_stream_closes_upstream(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    mock.fail_next("slow", delay=0.3)
    before = mock.stream_aborts
    with httpx.stream(
        "POST", f"{gateway.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(client_key)
    ) as r:
        for _ in r.iter_raw():
            break  # first event arrived: walk away
    deadline = time.monotonic() + 3
    while mock.stream_aborts == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mock.stream_aborts == before + 1
    entry = gateway.wait_entry(lambda e: e["request_id"] == r.headers["x-keygate-request-id"])
    assert entry["status"] == 499 and entry["error_code"] == "client_closed"


def test_first_byte_is_not_buffered(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("slow", delay=0.25)
    start = time.monotonic()
    with httpx.stream(
        "POST", f"{gateway.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(client_key)
    ) as r:
        chunks = r.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - start
        rest = b"".join(chunks)
        total = time.monotonic() - start
    assert first.startswith(b"data: ")
    # Six events 0.25 s apart: the first must arrive long before the last.
    assert first_at < total - 0.8
    assert rest.endswith(b"data: [DONE]\n\n")


def test_malformed_json_and_wrong_content_type(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    auth = bearer(client_key)
    r = httpx.post(
        f"{gateway.url}/chat/completions",
        content=b"{not json",
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(
        f"{gateway.url}/chat/completions",
        content=b"[1,2]",
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 400
    r = httpx.post(
        f"{gateway.url}/chat/completions", content=b"model=x", headers={**auth, "content-type": "text/plain"}
    )
    assert r.status_code == 415
    with pytest.raises(openai.BadRequestError):
        sdk(gateway, client_key).chat.completions.create(model=123, messages=[])  # type: ignore[arg-type]
    assert mock.requests == []
    assert sdk(gateway, client_key).models.list()


def test_body_over_limit_is_413_before_reading(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    answer = raw(gateway, head + b'{"model":')  # only a few bytes of the declared 50 MiB are sent
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"payload_too_large"' in answer
    with pytest.raises(openai.APIStatusError) as info:
        sdk(gateway, client_key).embeddings.create(model="m", input="x" * (11 * 1024 * 1024))
    assert info.value.status_code == 413
    assert mock.requests == []


def test_chunked_body_over_limit(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url, extra={"max_body_bytes": 1000}) as gw:
        key = gw.create_key()["key"]

        def chunks() -> Iterator[bytes]:
            for _ in range(50):
                yield b'{"input": "' + b"x" * 100

        r = httpx.post(
            f"{gw.url}/embeddings",
            content=chunks(),
            headers={**bearer(key), "content-type": "application/json"},
        )
        assert r.status_code == 413
        assert mock.requests == []


def test_slow_and_vanishing_clients_do_not_stop_the_server(gateway: Gateway, client_key: str) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    for _ in range(5):
        s = socket.create_connection((gateway.host, gateway.port))
        s.sendall(head + b'{"model"')
        s.close()  # vanish mid-body
    s = socket.create_connection((gateway.host, gateway.port))
    s.sendall(b"GET /v1/mod")  # and one that never finishes its request line
    assert sdk(gateway, client_key).models.list()
    s.close()


def test_stalled_body_times_out(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    with Gateway(tmp_path, upstream.url, extra={"body_read_timeout": 0.5}) as gw:
        key = gw.create_key()["key"]
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        ).encode()
        answer = raw(gw, head + b'{"model"', read_timeout=10)  # 8 of 100 bytes, then silence
        assert answer.startswith(b"HTTP/1.1 400")
        assert b'"request_timeout"' in answer
        assert mock.requests == []
        assert sdk(gw, key).models.list()  # and the gateway keeps serving


# --- routes and where traffic goes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/admin/keys",
        "/v1/assistants",
        "/v1/chat/completions/../../admin",
        "/v1/models/..%2f..%2fadmin",
        "/v1/models/%2e%2e",
        "//v1/models",
        "/v1//models",
        "/v1/models/gpt-4o/../../../etc/passwd",
        "/V1/models",
        "/v1/models?x=1/../../admin",
    ],
)
def test_only_allowlisted_routes(gateway: Gateway, client_key: str, mock: MockUpstream, path: str) -> None:
    answer = raw(
        gateway, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client_key}\r\n\r\n".encode()
    )
    if path.startswith("/v1/models?"):  # a query /v1/models does not take: a 400, not forwarded
        assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
        assert b'"unknown_parameter"' in answer
        assert mock.requests == []
    else:
        assert answer.startswith(b"HTTP/1.1 404"), answer[:100]
        assert b'"not_found"' in answer
        assert mock.requests == []


def test_an_unknown_path_is_logged_redacted(gateway: Gateway, client_key: str) -> None:
    leaked = "sk-proj-" + "Z" * 30
    r = httpx.get(f"{gateway.base}/v1/{leaked}/x", headers=bearer(client_key))
    assert r.status_code == 404
    entry = gateway.wait_entry(lambda e: e["request_id"] == r.headers["x-keygate-request-id"])
    assert entry["route"] == "-" and entry["status"] == 404
    assert leaked not in entry["path"] and entry["path"].startswith("/v1/sk-***")


def test_client_cannot_choose_the_upstream(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    attacker = f"127.0.0.1:{free_port()}"
    body = (
        b'{"model":"gpt-4o","messages":[],"base_url":"http://' + attacker.encode() + b'","url":"http://evil"}'
    )
    for request_line, extra in [
        (f"POST http://{attacker}/v1/chat/completions HTTP/1.1", ""),
        (
            "POST /v1/chat/completions HTTP/1.1",
            f"X-Forwarded-Host: {attacker}\r\nX-Original-URL: http://{attacker}/\r\n",
        ),
    ]:
        answer = raw(
            gateway,
            f"{request_line}\r\nHost: {attacker}\r\n{extra}Authorization: Bearer {client_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body,
        )
        assert answer.split(b"\r\n")[0] in (
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 404 Not Found",
            b"HTTP/1.1 400 Bad Request",
        )
    for seen in mock.requests:
        assert seen.path == "/v1/chat/completions"
        assert seen.headers.get("host", "").endswith(str(mock.port))


@pytest.mark.parametrize(
    ("client", "peer"),
    [
        ("1.2.3.4:5678", "1.2.3.4"),
        ("[::1]:5678", "::1"),
        ("[2001:db8::1]:80", "2001:db8::1"),
        ("unix-socket", "unix-socket"),
        ("1.2.3.4:port", "1.2.3.4:port"),
    ],
)
def test_parse_peer(client: str, peer: str) -> None:
    assert parse_peer(client) == peer


# --- guards that fail or cut a stream (the app's handling of the chain) -----------------------


class Explodes(Guard):
    """A guard with a bug in its request phase."""

    name = "explodes"

    def request(self, ctx: Context) -> KeygateError | None:
        raise RuntimeError("a bug in a guard")


class ExplodesOnComplete(Guard):
    name = "explodes_on_complete"

    def complete(self, ctx: Context) -> None:
        raise RuntimeError("a bug in accounting")


class CutsAfter(Guard):
    """Cuts a stream off after ``events`` chunks, remembering what the response phases saw."""

    name = "cuts_after"

    def __init__(self, events: int) -> None:
        self.events = events
        self.started: list[int] = []
        self.seen: list[bytes] = []

    def response_start(self, ctx: Context, status: int, headers: list[tuple[str, str]]) -> None:
        self.started.append(status)

    def chunk(self, ctx: Context, data: bytes) -> KeygateError | None:
        self.seen.append(data)
        if len(self.seen) >= self.events:
            return KeygateError("cut off by a guard", code="cut_off")
        return None


@pytest.fixture
def added_guards(monkeypatch: pytest.MonkeyPatch) -> list[Guard]:
    """Guards appended to the default chain of every gateway this test starts."""
    added: list[Guard] = []
    real = server.default_guards
    monkeypatch.setattr(server, "default_guards", lambda parts: [*real(parts), *added])
    return added


def test_a_guard_that_raises_is_a_500_and_still_recorded(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream, added_guards: list[Guard]
) -> None:
    added_guards.append(Explodes())
    with Gateway(tmp_path, upstream.url) as gw:
        key = gw.create_key()["key"]
        r = httpx.get(f"{gw.url}/models", headers=bearer(key))
        assert r.status_code == 500
        assert r.json()["error"] == {
            "message": "The gateway hit an internal error.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
        rid = r.headers["x-keygate-request-id"]
        entry = gw.wait_entry(lambda e: e["request_id"] == rid)
        assert (entry["status"], entry["error_code"]) == (500, "internal_error")
        assert any(e["event"] == "unhandled error" and e.get("request_id") == rid for e in gw.log_entries())
        assert mock.requests == []


def test_a_complete_phase_that_raises_does_not_stop_accounting(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream, added_guards: list[Guard]
) -> None:
    added_guards.append(ExplodesOnComplete())
    with Gateway(tmp_path, upstream.url) as gw:
        key = gw.create_key()["key"]
        r = httpx.get(f"{gw.url}/models", headers=bearer(key))
        assert r.status_code == 200
        rid = r.headers["x-keygate-request-id"]
        assert gw.wait_entry(lambda e: e["request_id"] == rid)["status"] == 200
        assert any(e["event"] == "guard complete phase failed" for e in gw.log_entries())


def test_a_chunk_guard_cuts_the_stream_with_an_error_event(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream, added_guards: list[Guard]
) -> None:
    cutter = CutsAfter(2)
    added_guards.append(cutter)
    with Gateway(tmp_path, upstream.url) as gw:
        key = gw.create_key()["key"]
        r = httpx.post(f"{gw.url}/chat/completions", json={**CHAT, "stream": True}, headers=bearer(key))
        assert r.status_code == 200 and cutter.started == [200]
        events = [e for e in r.text.split("\n\n") if e]
        # The two chunks the guard saw reach the client, then the error; never [DONE].
        assert r.content.startswith(b"".join(cutter.seen))
        assert (
            events[-1]
            == 'data: {"error":{"message":"cut off by a guard","type":"server_error","param":null,"code":"cut_off"}}'
        )
        assert "[DONE]" not in r.text
        entry = gw.wait_entry(lambda e: e["request_id"] == r.headers["x-keygate-request-id"])
        assert (entry["status"], entry["error_code"]) == (200, "cut_off")
        # A whole (non-streamed) answer never passes through the chunk phase.
        assert httpx.post(f"{gw.url}/chat/completions", json=CHAT, headers=bearer(key)).status_code == 200
        assert cutter.started == [200, 200] and len(cutter.seen) == 2


def test_the_sdk_cancels_a_background_response(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    # The SDK's cancel carries no JSON body; keygate forwards the action without one.
    made = gateway.create_key("cancel")
    client_key = made["key"]
    gateway.cli("objects", "assign", "resp_1", "--key", made["id"])  # (made elsewhere: assigned)
    mock.reply_next(200, {"id": "resp_1", "object": "response", "status": "cancelled", "output": []})
    cancelled = sdk(gateway, client_key).responses.cancel("resp_1")
    assert cancelled.status == "cancelled"
    sent = mock.requests[-1]
    assert (sent.method, sent.path, sent.body) == ("POST", "/v1/responses/resp_1/cancel", b"")
