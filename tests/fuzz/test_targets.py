"""The fuzz targets (``tests/fuzz/targets.py``) in the ordinary test run: every seed and every
input that once broke a target is replayed (so a crash found by ``scripts/fuzz.sh`` becomes a
regression test by copying it into ``tests/fuzz/corpus/TARGET/``), and each target meets a short
Hypothesis run, which stands in for atheris where it is not installed. The last tests replay, end
to end, what the fuzzer found: in the route matcher, and in the upstream response parser."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keygate import routes
from keygate.testing import MockUpstream

from ..helpers import Gateway
from .targets import TARGETS, Broken, routes_matcher

CORPUS = Path(__file__).parent / "corpus"
INPUTS = sorted(p for p in CORPUS.glob("*/*") if p.is_file())


def test_every_target_has_seeds() -> None:
    assert {p.parent.name for p in INPUTS} == set(TARGETS)


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_input_keeps_the_invariants(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600))
def test_targets_keep_their_invariants_on_random_input(name: str, data: bytes) -> None:
    TARGETS[name](data)


def test_the_harness_notices_a_broken_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    # A matcher that routes a dot segment must fail the target (so a pass means something).
    real = routes.match
    monkeypatch.setattr(routes, "match", lambda method, path: real(method, path.replace("/../", "/")))
    with pytest.raises(Broken, match="matched"):
        routes_matcher(b"\x00\x09../gpt-4o\x01\x01")


# Found by the fuzzer (tests/fuzz/corpus/routes/crash-trailing-newline): the identifier patterns
# ended in `$`, which also matches before a trailing newline, so /v1/models/gpt-4o%0A (granian
# decodes %0A) was routed, authenticated and limited, and stopped only by the upstream client's
# refusal to write a line break into a request.
def test_a_path_ending_in_a_newline_is_not_routed(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    for path in ("/v1/models/gpt-4o\n", "/v1/responses/resp_1\n", "/v1/responses/resp_1/cancel\n"):
        assert routes.match("POST" if path.endswith("cancel\n") else "GET", path) is None
    auth = {"Authorization": f"Bearer {client_key}"}
    for path in ("/v1/models/gpt-4o%0A", "/v1/responses/resp_1%0a", "/v1/responses/resp_1%0A/input_items"):
        r = httpx.get(gateway.base + path, headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert mock.requests == []


# Found by the fuzzer (tests/fuzz/corpus/routes/crash-double-dot-in-id): an identifier could hold
# two dots in a row (/v1/models/A..), which no OpenAI id does and which a path normaliser on the
# way might read as a parent segment; such paths are not routed.
def test_an_identifier_with_two_dots_in_a_row_is_not_routed(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    assert routes.match("GET", "/v1/models/gpt-4.1") is not None  # one dot is an ordinary id
    for path in ("/v1/models/A..", "/v1/models/gpt..4o", "/v1/responses/resp..1/input_items"):
        assert routes.match("GET", path) is None
        r = httpx.get(gateway.base + path, headers={"Authorization": f"Bearer {client_key}"})
        assert r.status_code == 404, r.text
    assert mock.requests == []


ODD_ANSWERS = {
    "below-100": b"HTTP/1.1 050 Odd\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    # tests/fuzz/corpus/http1/crash-body-in-interim-response: a 1xx with a body woke the wait
    # for the head with None in the same way (a 500 for a stream)
    "interim-with-body": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 199 OK\r\ncontent-length: 2\r\n\r\nok",
}


@pytest.fixture(params=sorted(ODD_ANSWERS))
def odd_status_upstream(request: pytest.FixtureRequest) -> Iterator[str]:
    """An upstream that answers every request with a status that is not a final response."""
    server = socket.create_server(("127.0.0.1", 0))
    answer = ODD_ANSWERS[request.param]

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    server.close()


# Found by the fuzzer (tests/fuzz/corpus/http1/crash-status-below-100): llhttp reads a status
# below 100 as a response whose body runs to the end of the connection; the client took it for an
# interim (1xx) response, and its first body byte woke a stream's wait for the head with None, so
# a streamed request ended in a 500. Such a status is now a malformed response (a 502).
def test_an_upstream_answer_with_no_final_status_is_a_bad_gateway(
    odd_status_upstream: str, tmp_path: Path
) -> None:
    with Gateway(tmp_path, odd_status_upstream) as gw:
        auth = {"Authorization": f"Bearer {gw.create_key()['key']}"}
        for stream in (True, False):
            body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            r = httpx.post(gw.url + "/chat/completions", headers=auth, json=body)
            assert r.status_code == 502, r.text
            assert r.json()["error"]["code"] == "upstream_connection_error"
