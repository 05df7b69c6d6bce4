"""What a hostile or broken world does to keygate: bad input, failing upstreams, header tricks."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET, Gateway, free_port


def sdk(gateway: Gateway, key: str, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key=key, max_retries=0, **kw)  # type: ignore[arg-type]


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


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_request_headers_are_allowlisted(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    r = httpx.post(
        f"{gateway.url}/chat/completions",
        json=CHAT,
        headers={
            "Authorization": f"Bearer {client_key}",
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


def test_response_headers_are_allowlisted(gateway: Gateway, client_key: str) -> None:
    r = httpx.post(
        f"{gateway.url}/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {client_key}"}
    )
    names = {k.lower() for k in r.headers}
    assert "set-cookie" not in names and "openai-organization" not in names and "openai-project" not in names
    assert {"x-request-id", "x-ratelimit-remaining-requests", "content-type"} <= names


def test_upstream_401_never_passes_through(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("401")
    with pytest.raises(openai.InternalServerError) as info:
        sdk(gateway, client_key).models.list()
    assert info.value.status_code == 502
    assert UPSTREAM_SECRET not in info.value.response.text
    mock.fail_next("403")
    r = httpx.get(f"{gateway.url}/models", headers={"Authorization": f"Bearer {client_key}"})
    assert r.status_code == 502 and UPSTREAM_SECRET not in r.text
    stderr = gateway.stderr_path.read_text()
    assert "upstream rejected the gateway's API key" in stderr


def test_upstream_401_on_stream(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("401")
    r = httpx.post(
        f"{gateway.url}/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {client_key}"},
    )
    assert r.status_code == 502 and UPSTREAM_SECRET not in r.text


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
    r = httpx.get(f"{gateway.url}/models", headers={"Authorization": f"Bearer {client_key}"})
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_error"


def test_upstream_drops_mid_stream(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    mock.fail_next("disconnect_mid_stream", delay=0.2)
    with httpx.stream(
        "POST",
        f"{gateway.url}/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {client_key}"},
    ) as r:
        body = r.read()
    assert r.status_code == 200
    assert b'"upstream_connection_error"' in body.splitlines()[-2]


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
    with Gateway(tmp_path / "refused", closed) if (tmp_path / "refused").mkdir() is None else None as gw:  # type: ignore[union-attr]
        key = gw.create_key()["key"]
        with pytest.raises(openai.APIStatusError) as info:
            sdk(gw, key).models.list()
        assert info.value.status_code == 502
        assert info.value.body["code"] == "upstream_connect_failed"  # type: ignore[index]


def test_client_disconnect_mid_stream_closes_upstream(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    mock.fail_next("slow", delay=0.3)
    before = mock.stream_aborts
    with httpx.stream(
        "POST",
        f"{gateway.url}/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {client_key}"},
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
    mock.fail_next("slow", delay=0.4)
    start = time.monotonic()
    with httpx.stream(
        "POST",
        f"{gateway.url}/chat/completions",
        json={**CHAT, "stream": True},
        headers={"Authorization": f"Bearer {client_key}"},
    ) as r:
        chunks = r.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - start
        rest = b"".join(chunks)
        total = time.monotonic() - start
    assert first.startswith(b"data: ")
    # Six events 0.4 s apart: the first must arrive long before the last.
    assert first_at < total - 1.0
    assert rest.endswith(b"data: [DONE]\n\n")


def test_malformed_json_and_wrong_content_type(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    auth = {"Authorization": f"Bearer {client_key}"}
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

        def chunks():  # type: ignore[no-untyped-def]
            for _ in range(50):
                yield b'{"input": "' + b"x" * 100

        r = httpx.post(
            f"{gw.url}/embeddings",
            content=chunks(),
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
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


@pytest.mark.parametrize(
    "path",
    [
        "/admin/keys",
        "/v1/files",
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
    if path.startswith("/v1/models?"):
        assert answer.startswith(b"HTTP/1.1 200")
        assert mock.requests[0].path == "/v1/models"
    else:
        assert answer.startswith(b"HTTP/1.1 404"), answer[:100]
        assert mock.requests == []


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


def test_clean_shutdown_drains_streams_and_loses_no_record(
    tmp_path: Path, upstream: MockUpstream, mock: MockUpstream
) -> None:
    import sqlite3
    import threading

    gw = Gateway(tmp_path, upstream.url).start()
    key = gw.create_key()["key"]
    mock.fail_next("slow", delay=0.3)
    got: dict[str, bytes] = {}

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{gw.url}/chat/completions",
            json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ) as r:
            got["body"] = r.read()

    t = threading.Thread(target=stream)
    t.start()
    while not mock.requests:
        time.sleep(0.01)
    assert gw.stop() == 0  # SIGTERM while the stream is in flight
    t.join()
    assert got["body"].endswith(b"data: [DONE]\n\n")
    rows = (
        sqlite3.connect(tmp_path / "keygate.db")
        .execute("SELECT status, completion_tokens FROM usage")
        .fetchall()
    )
    assert rows == [(200, 3)]


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
