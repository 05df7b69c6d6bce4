"""What the mock upstream answers each request with: replies, failure modes and the route table.

Built on the payload builders of :mod:`keygate.testing._payloads`; no I/O here either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

import orjson

from ._payloads import (
    MODEL_IDS,
    SPEECH_BYTES,
    Json,
    chat_completion,
    chat_stream,
    completion,
    completion_stream,
    embeddings,
    error_body,
    image_generation,
    model,
    models,
    moderation,
    response,
    response_stream,
    transcription,
)

# --- Replies and routes: what each request is answered with (still no I/O here). ---


@dataclass(frozen=True)
class Reply:
    """A complete (non-streamed) answer."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StreamReply:
    """A streamed answer: encoded server-sent events, sent one chunk each."""

    events: list[bytes]
    headers: tuple[tuple[str, str], ...] = ()


# A route gets the body, the content-type and the path argument (the model id in /v1/models/{id}).
Route = Callable[[bytes, str, str], "Reply | StreamReply"]


def json_reply(status: int, body: Json, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A JSON answer."""
    return Reply(status, orjson.dumps(body), headers=headers)


def invalid(message: str, status: int = 400, code: str | None = None, param: str | None = None) -> Reply:
    """An ``invalid_request_error``, OpenAI's most common error type."""
    return json_reply(status, error_body(message, "invalid_request_error", code, param))


def unauthorized(key: str | None) -> Reply:
    """OpenAI's 401, echoing the presented key in full so leak tests have something to find."""
    if key is None:
        return invalid(
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
            "https://platform.openai.com/account/api-keys.",
            401,
        )
    return invalid(
        f"Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        401,
        "invalid_api_key",
    )


def failure_reply(mode: str, key: str | None, retry_after: int) -> Reply | None:
    """The error a status-code failure mode answers with; None for the other modes."""
    if mode == "401":
        return unauthorized(key)
    if mode == "403":
        return invalid(
            f"You have insufficient permissions for this operation with API key {key}. "
            "Missing scopes: model.request.",
            403,
            "insufficient_permissions",
        )
    if mode == "429":
        message = (
            "Rate limit reached for requests in organization org-mock on requests per min (RPM): "
            f"Limit 10000, Used 10000, Requested 1. Please try again in {retry_after}s."
        )
        headers = (
            ("retry-after", str(retry_after)),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", f"{retry_after}s"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", f"{retry_after}s"),
        )
        return json_reply(429, error_body(message, "requests", "rate_limit_exceeded"), headers)
    if mode == "500":
        message = "The server had an error while processing your request. Sorry about that!"
        return json_reply(500, error_body(message, "server_error"))
    if mode == "503":
        message = "The engine is currently overloaded, please try again later."
        return json_reply(503, error_body(message, "server_error"))
    return None


def _json_route(
    build: Callable[[Json], Json],
    build_stream: Callable[[Json], list[bytes]] | None = None,
    *,
    needs_model: bool = True,
) -> Route:
    def route(raw: bytes, _content_type: str, _arg: str) -> Reply | StreamReply:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return invalid(
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                "sent was not valid JSON.)"
            )
        if not isinstance(body, dict):
            return invalid("The request body must be a JSON object.")
        if needs_model and not body.get("model"):
            return invalid("you must provide a model parameter")
        if build_stream is not None and body.get("stream") is True:
            return StreamReply(build_stream(body))
        return json_reply(200, build(body))

    return route


def _multipart_route(_raw: bytes, content_type: str, _arg: str) -> Reply | StreamReply:
    if not content_type.lower().startswith("multipart/form-data"):
        return invalid(f"Invalid Content-Type header ({content_type}), expected multipart/form-data.")
    return json_reply(200, transcription())


def _speech(_raw: bytes, _content_type: str, _arg: str) -> Reply | StreamReply:
    return Reply(200, SPEECH_BYTES, "audio/mpeg")


def _models(_raw: bytes, _content_type: str, _arg: str) -> Reply | StreamReply:
    return json_reply(200, models())


def _model(_raw: bytes, _content_type: str, model_id: str) -> Reply | StreamReply:
    if model_id in MODEL_IDS:
        return json_reply(200, model(model_id))
    return invalid(f"The model '{model_id}' does not exist", 404, "model_not_found", "model")


_ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/v1/chat/completions"): _json_route(chat_completion, chat_stream),
    ("POST", "/v1/completions"): _json_route(completion, completion_stream),
    ("POST", "/v1/embeddings"): _json_route(embeddings),
    ("POST", "/v1/responses"): _json_route(response, response_stream),
    ("POST", "/v1/moderations"): _json_route(moderation, needs_model=False),
    ("POST", "/v1/images/generations"): _json_route(image_generation, needs_model=False),
    ("POST", "/v1/audio/speech"): _speech,
    ("POST", "/v1/audio/transcriptions"): _multipart_route,
    ("POST", "/v1/audio/translations"): _multipart_route,
    ("GET", "/v1/models"): _models,
}


def find_route(method: str, path: str) -> tuple[Route, str] | None:
    """The route for a request and its path argument, or None (a 404)."""
    route = _ROUTES.get((method, path))
    if route is not None:
        return route, ""
    if method == "GET" and path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        return _model, unquote(path[len("/v1/models/") :])
    return None
