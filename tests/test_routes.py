from __future__ import annotations

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
