"""keygate.routes: the allowlist, and the facts each route carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate import routes


def test_allowlisted_routes() -> None:
    assert routes.match("POST", "/v1/chat/completions").name == "chat.completions"  # type: ignore[union-attr]
    assert routes.match("GET", "/v1/models/gpt-4o").upstream_path == "/models/gpt-4o"  # type: ignore[union-attr]
    assert routes.match("GET", "/v1/chat/completions") is None
    assert routes.match("POST", "/v1/files") is None
    assert routes.match("DELETE", "/v1/models/gpt-4o") is None


@given(st.text(max_size=40))
def test_no_dot_segments_or_encodings_are_ever_matched(tail: str) -> None:
    for path in (f"/v1/models/{tail}", f"/v1/responses/{tail}", f"/v1/{tail}"):
        route = routes.match("GET", path)
        if route is not None:
            assert ".." not in route.upstream_path.split("/")
            assert "%" not in path and "//" not in path and "\\" not in path


# --- Route facts: what every other module reads from the route, never from a table of its own ---

CHAT_EVENT = (b'"content":"', b'"content":""')
TEXT_EVENT = (b'"text":"', b'"text":""')
DELTA_EVENT = (b'"delta":"', b'"delta":""')


@pytest.mark.parametrize(
    ("method", "path", "name", "body", "streams", "metered", "usage_option", "output_fields", "event"),
    [
        (
            "POST",
            "/v1/chat/completions",
            "chat.completions",
            "json",
            True,
            True,
            True,
            ("max_completion_tokens", "max_tokens"),
            CHAT_EVENT,
        ),
        ("POST", "/v1/completions", "completions", "json", True, True, True, ("max_tokens",), TEXT_EVENT),
        (
            "POST",
            "/v1/responses",
            "responses",
            "json",
            True,
            True,
            False,
            ("max_output_tokens",),
            DELTA_EVENT,
        ),
        ("POST", "/v1/embeddings", "embeddings", "json", False, True, False, (), ()),
        ("GET", "/v1/models", "models", "none", False, False, False, (), ()),
        ("POST", "/v1/moderations", "moderations", "json", False, False, False, (), ()),
        ("POST", "/v1/images/generations", "images", "json", False, False, False, (), ()),
        ("POST", "/v1/images/edits", "images", "multipart", False, False, False, (), ()),
        ("POST", "/v1/images/variations", "images", "multipart", False, False, False, (), ()),
        ("POST", "/v1/audio/speech", "audio", "json", False, False, False, (), ()),
        ("POST", "/v1/audio/transcriptions", "audio", "multipart", True, False, False, (), ()),
        ("POST", "/v1/audio/translations", "audio", "multipart", False, False, False, (), ()),
        ("GET", "/v1/models/gpt-4o", "models", "none", False, False, False, (), ()),
        ("GET", "/v1/responses/resp_1", "responses", "none", False, False, False, (), ()),
        ("DELETE", "/v1/responses/resp_1", "responses", "none", False, False, False, (), ()),
        ("POST", "/v1/responses/resp_1/cancel", "responses", "json", False, False, False, (), ()),
        ("GET", "/v1/responses/resp_1/input_items", "responses", "none", False, False, False, (), ()),
    ],
)
def test_route_facts(
    method: str,
    path: str,
    name: str,
    body: str,
    streams: bool,
    metered: bool,
    usage_option: bool,
    output_fields: tuple[str, ...],
    event: tuple[bytes, ...],
) -> None:
    route = routes.match(method, path)
    assert route is not None
    assert (route.name, route.method, route.body) == (name, method, body)
    assert route.upstream_path == path.removeprefix("/v1")
    assert (route.streams, route.metered, route.usage_option) == (streams, metered, usage_option)
    assert (route.output_fields, route.output_event) == (output_fields, event)
    assert set(route.output_fields) <= set(routes.OUTPUT_TOKEN_FIELDS)
    assert route.name in routes.ROUTE_NAMES
    # A route that reports usage only when asked must be one that streams and is metered.
    assert not route.usage_option or (route.streams and route.metered)


def test_route_names() -> None:
    assert {
        "chat.completions",
        "completions",
        "responses",
        "embeddings",
        "models",
        "moderations",
        "images",
        "audio",
    } == routes.ROUTE_NAMES


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/"),
        ("GET", "/v1/models/-leading-dash"),
        ("GET", "/v1/models/a/b"),
        ("GET", "/v1/models/" + "a" * 201),
        ("POST", "/v1/models/gpt-4o"),
        ("GET", "/v1/responses/r1/cancel"),
        ("POST", "/v1/responses/r1/input_items"),
        ("GET", "/v1/responses/r%2e1"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "/v1/chat/completions?x=1"),
    ],
)
def test_near_misses_are_not_forwarded(method: str, path: str) -> None:
    assert routes.match(method, path) is None
