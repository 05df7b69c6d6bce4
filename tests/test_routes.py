"""keygate.routes: the allowlist, and the facts each route carries."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate import routes
from keygate.errors import InvalidRequest


def test_allowlisted_routes() -> None:
    assert routes.match("POST", "/v1/chat/completions").name == "chat.completions"  # type: ignore[union-attr]
    assert routes.match("GET", "/v1/models/gpt-4o").upstream_path == "/models/gpt-4o"  # type: ignore[union-attr]
    assert routes.match("GET", "/v1/chat/completions").action == "list"  # type: ignore[union-attr]
    assert routes.match("PUT", "/v1/files") is None
    assert routes.match("DELETE", "/v1/models/gpt-4o") is None
    assert routes.match("GET", "/v1/assistants") is None


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
        ("POST", "/v1/responses/resp_1/cancel", "responses", "none", False, False, False, (), ()),
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
    assert (route.output_fields, route.output_events[:1]) == (output_fields, event[:1] and (event,))
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
        "files",
        "uploads",
        "batches",
        "vector_stores",
        "conversations",
    } == routes.ROUTE_NAMES


@pytest.mark.parametrize(
    ("method", "path", "name", "kind", "action", "object_id"),
    [
        ("POST", "/v1/files", "files", "file", "create", ""),
        ("GET", "/v1/files", "files", "file", "list", ""),
        ("GET", "/v1/files/file-1", "files", "file", "use", "file-1"),
        ("GET", "/v1/files/file-1/content", "files", "file", "use", "file-1"),
        ("DELETE", "/v1/files/file-1", "files", "file", "delete", "file-1"),
        ("POST", "/v1/uploads", "uploads", "upload", "create", ""),
        ("POST", "/v1/uploads/upload_1/parts", "uploads", "upload", "use", "upload_1"),
        ("POST", "/v1/uploads/upload_1/complete", "uploads", "upload", "use", "upload_1"),
        ("POST", "/v1/uploads/upload_1/cancel", "uploads", "upload", "use", "upload_1"),
        ("POST", "/v1/batches", "batches", "batch", "create", ""),
        ("GET", "/v1/batches", "batches", "batch", "list", ""),
        ("GET", "/v1/batches/batch_1", "batches", "batch", "use", "batch_1"),
        ("POST", "/v1/batches/batch_1/cancel", "batches", "batch", "use", "batch_1"),
        ("POST", "/v1/vector_stores", "vector_stores", "vector_store", "create", ""),
        ("GET", "/v1/vector_stores", "vector_stores", "vector_store", "list", ""),
        ("POST", "/v1/vector_stores/vs_1", "vector_stores", "vector_store", "use", "vs_1"),
        ("DELETE", "/v1/vector_stores/vs_1", "vector_stores", "vector_store", "delete", "vs_1"),
        ("POST", "/v1/vector_stores/vs_1/search", "vector_stores", "vector_store", "use", "vs_1"),
        ("DELETE", "/v1/vector_stores/vs_1/files/file-1", "vector_stores", "vector_store", "use", "vs_1"),
        (
            "GET",
            "/v1/vector_stores/vs_1/file_batches/vsfb_1/files",
            "vector_stores",
            "vector_store",
            "use",
            "vs_1",
        ),
        ("POST", "/v1/conversations", "conversations", "conversation", "create", ""),
        ("DELETE", "/v1/conversations/conv_1/items/msg_1", "conversations", "conversation", "use", "conv_1"),
        ("DELETE", "/v1/conversations/conv_1", "conversations", "conversation", "delete", "conv_1"),
        ("POST", "/v1/responses", "responses", "response", "create", ""),
        ("GET", "/v1/responses/resp_1/input_items", "responses", "response", "use", "resp_1"),
        ("DELETE", "/v1/responses/resp_1", "responses", "response", "delete", "resp_1"),
        ("POST", "/v1/chat/completions", "chat.completions", "chat_completion", "create", ""),
        (
            "POST",
            "/v1/chat/completions/chatcmpl-1",
            "chat.completions",
            "chat_completion",
            "use",
            "chatcmpl-1",
        ),
        (
            "GET",
            "/v1/chat/completions/chatcmpl-1/messages",
            "chat.completions",
            "chat_completion",
            "use",
            "chatcmpl-1",
        ),
        ("GET", "/v1/models/gpt-4o", "models", "", "", ""),
    ],
)
def test_stored_object_facts(
    method: str, path: str, name: str, kind: str, action: str, object_id: str
) -> None:
    route = routes.match(method, path)
    assert route is not None
    assert (route.name, route.kind, route.action, route.object_id) == (name, kind, action, object_id)
    assert route.upstream_path == path.removeprefix("/v1")
    assert route.uses_model == (
        kind in ("", "response", "chat_completion") and action in ("", "create", "list")
    )


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


# --- query parameters: each route's own, re-encoded by keygate -------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/v1/models", set()),
        ("GET", "/v1/models/gpt-4o", set()),
        ("POST", "/v1/chat/completions", set()),
        ("POST", "/v1/responses", set()),
        (
            "GET",
            "/v1/responses/resp_1",
            {"include", "include[]", "include_obfuscation", "starting_after", "stream"},
        ),
        ("DELETE", "/v1/responses/resp_1", set()),
        ("POST", "/v1/responses/resp_1/cancel", set()),
        (
            "GET",
            "/v1/responses/resp_1/input_items",
            {"after", "before", "limit", "order", "include", "include[]"},
        ),
    ],
)
def test_route_query_parameters(method: str, path: str, query: set[str]) -> None:
    route = routes.match(method, path)
    assert route is not None and route.query == query
    assert route.query <= set(routes.QUERY_PARAMS)


ITEMS = routes.match("GET", "/v1/responses/resp_1/input_items")


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        ("", ""),
        ("&&", ""),
        ("limit=20&order=desc&after=msg_abc.1:2-3", "limit=20&order=desc&after=msg_abc.1:2-3"),
        ("%6Cimit=%32", "limit=2"),  # decoded, then written plainly
        ("include[]=a.b&include%5B%5D=c_d", "include%5B%5D=a.b&include%5B%5D=c_d"),  # an array: repeats
        ("include=a&include=b", "include=a&include=b"),
    ],
)
def test_canonical_query_rewrites_what_passes(raw: str, forwarded: str) -> None:
    assert ITEMS is not None
    assert routes.canonical_query(ITEMS, raw) == forwarded


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ("api_key=kg_abc", "unknown_parameter", "api_key"),
        ("LIMIT=2", "unknown_parameter", None),  # not a plain lower-case name: not repeated back
        ("sk-proj-" + "A" * 30 + "=1", "unknown_parameter", None),
        ("limit=2&limit=2", "duplicate_parameter", "limit"),
        ("limit=-1", "invalid_value", "limit"),
        ("limit=12345", "invalid_value", "limit"),
        ("order=ASC", "invalid_value", "order"),
        ("after=a b", "invalid_value", "after"),
        ("after=a%0d%0aHost:%20evil", "invalid_value", "after"),
        ("include[]=Message.X", "invalid_value", "include[]"),
        ("limit=1;order=asc", "invalid_value", "limit"),
        ("&".join(["include=a"] * 65), "invalid_query", None),
    ],
)
def test_canonical_query_refuses(raw: str, code: str, param: str | None) -> None:
    assert ITEMS is not None
    err = routes.canonical_query(ITEMS, raw)
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert (err.code, err.param) == (code, param)
    assert "kg_abc" not in err.message and "AAAA" not in err.message


@given(st.text(max_size=60))
def test_canonical_query_forwards_only_safe_characters(raw: str) -> None:
    assert ITEMS is not None
    out = routes.canonical_query(ITEMS, raw)
    if isinstance(out, str):
        assert all(c.isascii() and (c.isalnum() or c in "._:-=&%") for c in out)
        for field in filter(None, out.split("&")):
            assert field.split("=", 1)[0] in {"after", "before", "limit", "order", "include", "include%5B%5D"}


@given(st.text(alphabet="ab=&;%+2 .[]é", max_size=30))
def test_query_pairs_read_as_parse_qsl_does(raw: str) -> None:
    assert routes.query_pairs(raw) == parse_qsl(raw, keep_blank_values=True)
