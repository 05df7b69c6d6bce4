"""The allowlist of API routes keygate forwards, and what keygate knows about each one.

Anything not listed is 404 without touching the upstream. Paths are matched on the raw request path
against anchored patterns whose identifier segments admit only ``[A-Za-z0-9._:-]``, so dot segments,
percent-encodings and doubled slashes never match.

Every fact other modules need about a route lives on its :class:`Route`: how its body is read,
whether it can stream, whether its answers report token usage, whether a stream reports usage only
when asked, which body fields cap the output, and what a streamed output event looks like. No other
module keeps a table keyed by route names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Every body field the OpenAI API uses to cap output length; a key's max_output_tokens clamps each.
OUTPUT_TOKEN_FIELDS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # stable name used by policies and usage records, e.g. "chat.completions"
    method: str
    upstream_path: str  # path relative to the upstream base URL, e.g. "/chat/completions"
    body: str  # "json", "multipart" or "none"
    streams: bool = False  # answers with server-sent events when the body says "stream": true
    # The answer reports token usage (a JSON "usage" object, or a usage event in a stream); the
    # request is metered in tokens (estimate, token rates, budgets).
    metered: bool = False
    # A stream reports usage only when asked with stream_options.include_usage (keygate asks).
    usage_option: bool = False
    # The body fields that cap this route's output, in the order they are looked for; the first is
    # the one keygate sets when a request gives none. Empty: the route has no output tokens.
    output_fields: tuple[str, ...] = ()
    # How a streamed event with output text looks, and how an empty one does (each counts as at
    # least one output token, see metering.py); empty for routes whose streams are not counted.
    output_event: tuple[bytes, bytes] | tuple[()] = ()


_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}"

_CHAT = Route(
    "chat.completions",
    "POST",
    "/chat/completions",
    "json",
    streams=True,
    metered=True,
    usage_option=True,
    output_fields=("max_completion_tokens", "max_tokens"),
    output_event=(b'"content":"', b'"content":""'),
)
_COMPLETIONS = Route(
    "completions",
    "POST",
    "/completions",
    "json",
    streams=True,
    metered=True,
    usage_option=True,
    output_fields=("max_tokens",),
    output_event=(b'"text":"', b'"text":""'),
)
_RESPONSES = Route(
    "responses",
    "POST",
    "/responses",
    "json",
    streams=True,
    metered=True,
    output_fields=("max_output_tokens",),
    output_event=(b'"delta":"', b'"delta":""'),
)

_STATIC: Final[dict[tuple[str, str], Route]] = {
    (r.method, "/v1" + r.upstream_path): r
    for r in (
        _CHAT,
        _COMPLETIONS,
        _RESPONSES,
        Route("embeddings", "POST", "/embeddings", "json", metered=True),
        Route("models", "GET", "/models", "none"),
        Route("moderations", "POST", "/moderations", "json"),
        Route("images", "POST", "/images/generations", "json"),
        Route("images", "POST", "/images/edits", "multipart"),
        Route("images", "POST", "/images/variations", "multipart"),
        Route("audio", "POST", "/audio/speech", "json"),
        Route("audio", "POST", "/audio/transcriptions", "multipart", streams=True),
        Route("audio", "POST", "/audio/translations", "multipart"),
    )
}

# Routes with an identifier in the path: (method, pattern, name, body).
_DYNAMIC: Final[list[tuple[str, re.Pattern[str], str, str]]] = [
    ("GET", re.compile(rf"^/v1/models/({_ID})$"), "models", "none"),
    ("GET", re.compile(rf"^/v1/responses/({_ID})$"), "responses", "none"),
    ("DELETE", re.compile(rf"^/v1/responses/({_ID})$"), "responses", "none"),
    ("POST", re.compile(rf"^/v1/responses/({_ID})/cancel$"), "responses", "json"),
    ("GET", re.compile(rf"^/v1/responses/({_ID})/input_items$"), "responses", "none"),
]
_DYNAMIC_PREFIXES: Final = ("/v1/models/", "/v1/responses/")

ROUTE_NAMES: Final = frozenset([r.name for r in _STATIC.values()] + [name for _, _, name, _ in _DYNAMIC])


def match(method: str, path: str) -> Route | None:
    """The route for this method and raw path, or None when it is not forwarded."""
    route = _STATIC.get((method, path))
    if route is not None:
        return route
    if path.startswith(_DYNAMIC_PREFIXES):
        for m, pattern, name, body in _DYNAMIC:
            if m == method and pattern.match(path):
                return Route(name, method, path[len("/v1") :], body)
    return None
