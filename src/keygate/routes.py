"""The allowlist of API routes keygate forwards, and what keygate knows about each one.

Anything not listed is 404 without touching the upstream. Paths are matched on the raw request path
against anchored patterns whose identifier segments admit only ``[A-Za-z0-9._:-]``, so dot segments,
percent-encodings and doubled slashes never match. Query strings are never forwarded as sent: a
route lists the parameters it takes (their syntax is :data:`QUERY_PARAMS`), anything else is a 400,
and :func:`canonical_query` writes the query that is forwarded.

Every fact other modules need about a route lives on its :class:`Route`: how its body is read,
whether it can stream, whether its answers report token usage, whether a stream reports usage only
when asked, which body fields cap and multiply the output, what a streamed output event looks like,
and whether the upstream bills it in units keygate cannot meter. No other module keeps a table keyed
by route names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote

from .errors import InvalidRequest

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
    # How a streamed event with output looks, and how an empty one does, one pair per kind of
    # output (text, refusals, tool-call arguments, reasoning...; each counts as at least one output
    # token, see metering.py); empty for routes whose streams are not counted.
    output_events: tuple[tuple[bytes, bytes], ...] = ()
    # Body fields that multiply the output: the upstream bills up to (the largest of them) x the
    # output cap (chat "n"; completions "best_of" and "n").
    output_multipliers: tuple[str, ...] = ()
    # Body fields that make a request's cost unknowable until later: refused under a budget when
    # set to anything but false/null (responses "background": it is billed after the answer).
    unbounded_fields: tuple[str, ...] = ()
    # The upstream bills this route per image, per character or per minute, not in reported
    # tokens: refused under any budget, since keygate has no price for it (images, audio).
    unit_billed: bool = False
    # The query parameters this route forwards (their syntax: QUERY_PARAMS); any other is a 400,
    # and what is forwarded is re-encoded by keygate (canonical_query), never the client's string.
    query: frozenset[str] = frozenset()


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
    output_events=(
        (b'"content":"', b'"content":""'),
        (b'"refusal":"', b'"refusal":""'),
        (b'"arguments":"', b'"arguments":""'),  # tool_calls[].function (and function_call)
    ),
    output_multipliers=("n",),
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
    output_events=((b'"text":"', b'"text":""'),),
    output_multipliers=("best_of", "n"),
)
_RESPONSES = Route(
    "responses",
    "POST",
    "/responses",
    "json",
    streams=True,
    metered=True,
    output_fields=("max_output_tokens",),
    # every *.delta event: output text, refusals, function-call arguments, reasoning (summary) text
    output_events=((b'"delta":"', b'"delta":""'),),
    unbounded_fields=("background",),
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
        Route("images", "POST", "/images/generations", "json", unit_billed=True),
        Route("images", "POST", "/images/edits", "multipart", unit_billed=True),
        Route("images", "POST", "/images/variations", "multipart", unit_billed=True),
        Route("audio", "POST", "/audio/speech", "json", unit_billed=True),
        Route("audio", "POST", "/audio/transcriptions", "multipart", streams=True, unit_billed=True),
        Route("audio", "POST", "/audio/translations", "multipart", unit_billed=True),
    )
}

# Query parameters, by name: the syntax of one value, and whether the name may repeat (an array,
# sent as include[]=a&include[]=b by the official SDKs, or include=a&include=b). Values are held to
# characters that need no encoding, so keygate writes the forwarded query itself.
_INCLUDABLE = r"[a-z][a-z0-9_]{0,63}(\.[a-z][a-z0-9_]{0,63}){0,7}"  # e.g. message.output_text.logprobs
QUERY_PARAMS: Final[dict[str, tuple[re.Pattern[str], bool]]] = {
    "after": (re.compile(_ID), False),
    "before": (re.compile(_ID), False),
    "limit": (re.compile(r"[0-9]{1,4}"), False),
    "order": (re.compile(r"asc|desc"), False),
    "include": (re.compile(_INCLUDABLE), True),
    "include[]": (re.compile(_INCLUDABLE), True),
    "include_obfuscation": (re.compile(r"true|false"), False),
    "starting_after": (re.compile(r"[0-9]{1,9}"), False),
    "stream": (re.compile(r"true|false"), False),
}
_RETRIEVE_QUERY: Final = frozenset(
    {"include", "include[]", "include_obfuscation", "starting_after", "stream"}
)
_ITEMS_QUERY: Final = frozenset({"after", "before", "limit", "order", "include", "include[]"})

# Routes with an identifier in the path: (method, pattern, name, body, query parameters).
_DYNAMIC: Final[list[tuple[str, re.Pattern[str], str, str, frozenset[str]]]] = [
    ("GET", re.compile(rf"^/v1/models/({_ID})$"), "models", "none", frozenset()),
    ("GET", re.compile(rf"^/v1/responses/({_ID})$"), "responses", "none", _RETRIEVE_QUERY),
    ("DELETE", re.compile(rf"^/v1/responses/({_ID})$"), "responses", "none", frozenset()),
    ("POST", re.compile(rf"^/v1/responses/({_ID})/cancel$"), "responses", "none", frozenset()),
    ("GET", re.compile(rf"^/v1/responses/({_ID})/input_items$"), "responses", "none", _ITEMS_QUERY),
]
_DYNAMIC_PREFIXES: Final = ("/v1/models/", "/v1/responses/")

ROUTE_NAMES: Final = frozenset([r.name for r in _STATIC.values()] + [d[2] for d in _DYNAMIC])


def match(method: str, path: str) -> Route | None:
    """The route for this method and raw path, or None when it is not forwarded."""
    route = _STATIC.get((method, path))
    if route is not None:
        return route
    if path.startswith(_DYNAMIC_PREFIXES) and ".." not in path:  # (no id has two dots in a row)
        for m, pattern, name, body, query in _DYNAMIC:
            # fullmatch: a pattern's `$` alone would also match before a trailing newline
            if m == method and pattern.fullmatch(path):
                return Route(name, method, path[len("/v1") :], body, query=query)
    return None


# A parameter name an error may repeat to the client: a plain lower-case word, never key-shaped.
_NAMEABLE = re.compile(r"[a-z][a-z0-9_]{0,31}(\[\])?")
_MAX_PARAMS = 64


def query_pairs(raw: str) -> list[tuple[str, str]]:
    """The decoded ``(name, value)`` pairs of a query string, as ``urllib.parse.parse_qsl`` reads
    them (``+`` is a space, a field without ``=`` has an empty value, empty fields are skipped);
    a plain query with nothing to decode is split here without it (about 7x cheaper)."""
    if "%" in raw or "+" in raw:
        return parse_qsl(raw, keep_blank_values=True)
    pairs = []
    for field in raw.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((name, value))
    return pairs


def canonical_query(route: Route, raw: str) -> str | InvalidRequest:
    """The query string to forward for ``raw`` (as the client sent it, percent-encoded), or the
    400 to answer instead.

    Only the route's own parameters pass, each value checked against its syntax; an unknown name
    is ``unknown_parameter``, a repeated single-valued one ``duplicate_parameter``, a bad value
    ``invalid_value`` (the value is never echoed). The result is written by keygate from the
    decoded pairs, in the client's order, so nothing of the client's encoding reaches the upstream.
    """
    if raw.count("&") >= _MAX_PARAMS:
        return InvalidRequest(f"Too many query parameters (at most {_MAX_PARAMS}).", code="invalid_query")
    allowed = route.query
    seen: set[str] = set()
    out: list[str] = []
    for name, value in query_pairs(raw):
        if name not in allowed:
            if _NAMEABLE.fullmatch(name):
                return InvalidRequest(
                    f"Unknown query parameter '{name}' for this route.", code="unknown_parameter", param=name
                )
            return InvalidRequest("Unknown query parameter for this route.", code="unknown_parameter")
        syntax, many = QUERY_PARAMS[name]
        if name in seen and not many:
            return InvalidRequest(
                f"Query parameter '{name}' may be given only once.", code="duplicate_parameter", param=name
            )
        if not syntax.fullmatch(value):
            return InvalidRequest(
                f"Invalid value for query parameter '{name}'.", code="invalid_value", param=name
            )
        seen.add(name)
        out.append(quote(name, safe="") + "=" + value)
    return "&".join(out)
