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
    # Stored objects (docs/objects.md; the ownership guard, guards/objects.py, reads these). ``kind``
    # is the kind of object the route acts on ("file", "batch", ...; empty: none); ``action`` what
    # it does with it: "create" (the answer's id becomes the caller's), "list" (the answer is
    # filtered to the caller's objects and re-paged), "use" (the object ``object_id`` from the
    # path must be the caller's: retrieve, modify, cancel, its children) or "delete" ("use", and a
    # successful answer ends the ownership record).
    kind: str = ""
    action: str = ""
    object_id: str = ""
    # The body may name stored objects (previous_response_id, conversation, file ids, vector stores):
    # each is checked before forwarding.
    references: bool = False
    # The request uses a model, so a model allowlist needs one named (False: managing files, batches,
    # vector stores and conversations, where no model runs).
    uses_model: bool = True


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
    kind="chat_completion",  # stored only with "store": true
    action="create",
    references=True,
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
    kind="response",  # stored unless "store": false
    action="create",
    references=True,
)


def _objects(name: str, kind: str, path: str, body: str = "json", **facts: object) -> Route:
    """A collection route of stored objects (create or list), which names no model."""
    return Route(name, "POST" if body != "none" else "GET", path, body, kind=kind, uses_model=False, **facts)  # type: ignore[arg-type]


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
    "purpose": (re.compile(r"[a-z][a-z0-9_-]{0,31}"), False),
    "model": (re.compile(_ID), False),
    "filter": (re.compile(r"in_progress|completed|failed|cancelled"), False),
}
_RETRIEVE_QUERY: Final = frozenset(
    {"include", "include[]", "include_obfuscation", "starting_after", "stream"}
)
_ITEMS_QUERY: Final = frozenset({"after", "before", "limit", "order", "include", "include[]"})
_PAGE_QUERY: Final = frozenset({"after", "limit"})
_LIST_QUERY: Final = frozenset({"after", "before", "limit", "order"})
_INCLUDE_QUERY: Final = frozenset({"include", "include[]"})

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
        _objects("files", "file", "/files", "multipart", action="create"),
        _objects("files", "file", "/files", "none", action="list", query=_LIST_QUERY | {"purpose"}),
        _objects("uploads", "upload", "/uploads", action="create"),
        _objects("batches", "batch", "/batches", action="create", references=True),
        _objects("batches", "batch", "/batches", "none", action="list", query=_PAGE_QUERY),
        _objects("vector_stores", "vector_store", "/vector_stores", action="create", references=True),
        _objects("vector_stores", "vector_store", "/vector_stores", "none", action="list", query=_LIST_QUERY),
        _objects("conversations", "conversation", "/conversations", action="create", references=True),
        Route(
            "chat.completions",
            "GET",
            "/chat/completions",
            "none",
            kind="chat_completion",
            action="list",
            query=_PAGE_QUERY | {"order", "model"},
        ),
    )
}

# Routes with identifiers in the path: (method, pattern, route facts). The first identifier is the
# stored object the route acts on (a child route: its parent, whose owner owns the children).
_Dyn = tuple[str, re.Pattern[str], Route]


def _dyn(method: str, pattern: str, name: str, body: str = "none", **facts: object) -> _Dyn:
    full = "^/v1/" + pattern.replace("{id}", f"({_ID})").replace("{sub}", _ID) + "$"
    return (method, re.compile(full), Route(name, method, "", body, **facts))  # type: ignore[arg-type]


def _owned(kind: str, name: str, items: list[tuple[str, str, str, frozenset[str]]]) -> list[_Dyn]:
    """By-id routes of one kind of stored object: (method, path pattern, body, query)."""
    out = []
    for method, pattern, body, query in items:
        action = "delete" if method == "DELETE" and pattern.count("{") == 1 else "use"
        refs = body == "json" and kind in ("vector_store", "conversation")
        out.append(
            _dyn(
                method,
                pattern,
                name,
                body,
                query=query,
                kind=kind,
                action=action,
                references=refs,
                uses_model=False,
            )
        )
    return out


_NONE: Final = frozenset[str]()
_DYNAMIC: Final[list[_Dyn]] = [
    _dyn("GET", "models/{id}", "models"),
    *_owned(
        "response",
        "responses",
        [
            ("GET", "responses/{id}", "none", _RETRIEVE_QUERY),
            ("DELETE", "responses/{id}", "none", _NONE),
            ("POST", "responses/{id}/cancel", "none", _NONE),
            ("GET", "responses/{id}/input_items", "none", _ITEMS_QUERY),
        ],
    ),
    *_owned(
        "file",
        "files",
        [
            ("GET", "files/{id}", "none", _NONE),
            ("DELETE", "files/{id}", "none", _NONE),
            ("GET", "files/{id}/content", "none", _NONE),
        ],
    ),
    *_owned(
        "upload",
        "uploads",
        [
            ("POST", "uploads/{id}/parts", "multipart", _NONE),
            ("POST", "uploads/{id}/complete", "json", _NONE),
            ("POST", "uploads/{id}/cancel", "none", _NONE),
        ],
    ),
    *_owned(
        "batch",
        "batches",
        [("GET", "batches/{id}", "none", _NONE), ("POST", "batches/{id}/cancel", "none", _NONE)],
    ),
    *_owned(
        "vector_store",
        "vector_stores",
        [
            ("GET", "vector_stores/{id}", "none", _NONE),
            ("POST", "vector_stores/{id}", "json", _NONE),
            ("DELETE", "vector_stores/{id}", "none", _NONE),
            ("POST", "vector_stores/{id}/search", "json", _NONE),
            ("POST", "vector_stores/{id}/files", "json", _NONE),
            ("GET", "vector_stores/{id}/files", "none", _LIST_QUERY | {"filter"}),
            ("GET", "vector_stores/{id}/files/{sub}", "none", _NONE),
            ("POST", "vector_stores/{id}/files/{sub}", "json", _NONE),
            ("DELETE", "vector_stores/{id}/files/{sub}", "none", _NONE),
            ("GET", "vector_stores/{id}/files/{sub}/content", "none", _NONE),
            ("POST", "vector_stores/{id}/file_batches", "json", _NONE),
            ("GET", "vector_stores/{id}/file_batches/{sub}", "none", _NONE),
            ("POST", "vector_stores/{id}/file_batches/{sub}/cancel", "none", _NONE),
            ("GET", "vector_stores/{id}/file_batches/{sub}/files", "none", _LIST_QUERY | {"filter"}),
        ],
    ),
    *_owned(
        "conversation",
        "conversations",
        [
            ("GET", "conversations/{id}", "none", _NONE),
            ("POST", "conversations/{id}", "json", _NONE),
            ("DELETE", "conversations/{id}", "none", _NONE),
            ("GET", "conversations/{id}/items", "none", _ITEMS_QUERY - {"before"}),
            ("POST", "conversations/{id}/items", "json", _INCLUDE_QUERY),
            ("GET", "conversations/{id}/items/{sub}", "none", _INCLUDE_QUERY),
            ("DELETE", "conversations/{id}/items/{sub}", "none", _NONE),
        ],
    ),
    *_owned(
        "chat_completion",
        "chat.completions",
        [
            ("GET", "chat/completions/{id}", "none", _NONE),
            ("POST", "chat/completions/{id}", "json", _NONE),
            ("DELETE", "chat/completions/{id}", "none", _NONE),
            ("GET", "chat/completions/{id}/messages", "none", _PAGE_QUERY | {"order"}),
        ],
    ),
]
_DYNAMIC_PREFIXES: Final = (
    "/v1/models/",
    "/v1/responses/",
    "/v1/files/",
    "/v1/uploads/",
    "/v1/batches/",
    "/v1/vector_stores/",
    "/v1/conversations/",
    "/v1/chat/completions/",
)

ROUTE_NAMES: Final = frozenset([r.name for r in _STATIC.values()] + [d[2].name for d in _DYNAMIC])


def _by_segment() -> dict[tuple[str, str], list[tuple[re.Pattern[str], Route]]]:
    """The dynamic routes by method and first path segment after /v1/ ("files", "chat"...), so a
    match tries only the few patterns of its own collection."""
    out: dict[tuple[str, str], list[tuple[re.Pattern[str], Route]]] = {}
    for method, pattern, facts in _DYNAMIC:
        segment = pattern.pattern[len("^/v1/") :].split("/", 1)[0]
        out.setdefault((method, segment), []).append((pattern, facts))
    return out


_DYNAMIC_BY: Final = _by_segment()


def match(method: str, path: str) -> Route | None:
    """The route for this method and raw path, or None when it is not forwarded."""
    route = _STATIC.get((method, path))
    if route is not None:
        return route
    if path.startswith(_DYNAMIC_PREFIXES) and ".." not in path:  # (no id has two dots in a row)
        for pattern, facts in _DYNAMIC_BY.get((method, path[4 : path.find("/", 4)]), ()):
            # fullmatch: a pattern's `$` alone would also match before a trailing newline
            found = pattern.fullmatch(path)
            if found is not None:
                return _with_path(facts, path[len("/v1") :], found.group(1) if facts.kind else "")
    return None


def _with_path(facts: Route, upstream_path: str, object_id: str) -> Route:
    return Route(
        facts.name,
        facts.method,
        upstream_path,
        facts.body,
        query=facts.query,
        kind=facts.kind,
        action=facts.action,
        object_id=object_id,
        references=facts.references,
        uses_model=facts.uses_model,
    )


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
