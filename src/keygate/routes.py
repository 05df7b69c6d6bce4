"""The allowlist of API routes keygate forwards. Anything else is 404 without touching upstream.

Paths are matched on the raw request path against anchored patterns whose identifier segments
admit only ``[A-Za-z0-9._:-]``, so dot segments, percent-encodings and doubled slashes never match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # stable name used by policies and usage records, e.g. "chat.completions"
    method: str
    upstream_path: str  # path relative to the upstream base URL, e.g. "/chat/completions"
    body: str  # "json", "multipart" or "none"
    streamable: bool = False


_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}"

_STATIC: Final[dict[tuple[str, str], tuple[str, str, bool]]] = {
    ("POST", "/v1/chat/completions"): ("chat.completions", "json", True),
    ("POST", "/v1/completions"): ("completions", "json", True),
    ("POST", "/v1/embeddings"): ("embeddings", "json", False),
    ("GET", "/v1/models"): ("models", "none", False),
    ("POST", "/v1/responses"): ("responses", "json", True),
    ("POST", "/v1/moderations"): ("moderations", "json", False),
    ("POST", "/v1/images/generations"): ("images", "json", False),
    ("POST", "/v1/images/edits"): ("images", "multipart", False),
    ("POST", "/v1/images/variations"): ("images", "multipart", False),
    ("POST", "/v1/audio/speech"): ("audio", "json", False),
    ("POST", "/v1/audio/transcriptions"): ("audio", "multipart", True),
    ("POST", "/v1/audio/translations"): ("audio", "multipart", False),
}

_DYNAMIC: Final[list[tuple[str, re.Pattern[str], str]]] = [
    ("GET", re.compile(rf"^/v1/models/({_ID})$"), "models"),
    ("GET", re.compile(rf"^/v1/responses/({_ID})$"), "responses"),
    ("DELETE", re.compile(rf"^/v1/responses/({_ID})$"), "responses"),
    ("POST", re.compile(rf"^/v1/responses/({_ID})/cancel$"), "responses"),
    ("GET", re.compile(rf"^/v1/responses/({_ID})/input_items$"), "responses"),
]

ROUTE_NAMES: Final = frozenset([name for name, _, _ in _STATIC.values()] + [name for _, _, name in _DYNAMIC])

_STATIC_ROUTES: Final = {
    key: Route(name, key[0], key[1][len("/v1") :], body, stream)
    for key, (name, body, stream) in _STATIC.items()
}


def match(method: str, path: str) -> Route | None:
    """The route for this method and raw path, or None when it is not forwarded."""
    route = _STATIC_ROUTES.get((method, path))
    if route is not None:
        return route
    if path.startswith("/v1/models/") or path.startswith("/v1/responses/"):
        for m, pattern, name in _DYNAMIC:
            if m == method and pattern.match(path):
                return Route(name, method, path[len("/v1") :], "json" if method == "POST" else "none")
    return None
