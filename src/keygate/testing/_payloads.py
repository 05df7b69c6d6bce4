"""What the mock upstream in `keygate.testing` answers: canned OpenAI-shaped payloads and routes.

Every builder is a pure function of the request, so answers are deterministic apart from ids and
timestamps, and nothing here does I/O. The shapes follow the official `openai` SDK's types closely
enough that the SDK parses them (including `client.responses.stream()` accumulation).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
import time
from typing import Any

import orjson

MOCK_TEXT = "Hello from mock"
FULL_WORDS = len(MOCK_TEXT.split())
TRANSCRIPT_TEXT = "hello from mock"
DEFAULT_MODEL = "gpt-4o-mini"
MODEL_IDS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "o3-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "omni-moderation-latest",
    "dall-e-3",
    "tts-1",
    "whisper-1",
)
MODELS_CREATED = 1_715_367_049
EMBEDDING_DIMENSIONS = 8
# A real (tiny) MP3 frame header after an ID3 tag, padded: enough for "it is audio" checks.
SPEECH_BYTES = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(48)
# A 1x1 transparent PNG.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)

_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)

Json = dict[str, Any]


def new_id(prefix: str) -> str:
    """Return an OpenAI-looking id such as ``chatcmpl-<hex>``."""
    return prefix + secrets.token_hex(12)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> Json:
    """Return OpenAI's error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def sse_data(payload: Json | str) -> bytes:
    """Encode one ``data:``-only server-sent event (chat and legacy completions streams)."""
    data = payload.encode() if isinstance(payload, str) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def sse_event(payload: Json) -> bytes:
    """Encode one named server-sent event, as the Responses API sends them."""
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def count_words(value: Any) -> int:
    """Count whitespace-separated words in message-like content; token ids count one each.

    Dicts are only searched under content-bearing keys, so roles and names do not count.
    """
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        return sum(count_words(value[key]) for key in ("content", "text", "input") if key in value)
    return 0


def _output_words(limit: Any) -> list[str]:
    """The words of MOCK_TEXT the model may produce under a token limit (one token per word)."""
    words = MOCK_TEXT.split()
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
        return words[:limit]
    return words


# Reasoning models think before they answer: hidden tokens, never streamed, reported only in the
# usage details (completion_tokens_details / output_tokens_details.reasoning_tokens) and counted in
# the output tokens. Like OpenAI's, they count against the output cap, which can end a response
# before any visible word.
REASONING_TOKENS = 300
_REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")


def _think(body: Json, limit: Any) -> tuple[int, list[str]]:
    """The hidden reasoning tokens and the visible words of an answer under the output cap."""
    model = body.get("model")
    if not (isinstance(model, str) and model.startswith(_REASONING_MODELS)):
        return 0, _output_words(limit)
    if not (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
        return REASONING_TOKENS, _output_words(None)
    reasoning = min(REASONING_TOKENS, limit)
    return reasoning, _output_words(limit - reasoning) if limit > reasoning else []


def _spaced(words: list[str]) -> list[str]:
    """Per-chunk deltas that concatenate back to the joined text."""
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def _chat_usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> Json:
    completion_tokens += reasoning_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _include_usage(body: Json) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _limit(body: Json, *keys: str) -> Any:
    return next((body[key] for key in keys if body.get(key) is not None), None)


def chat_completion(body: Json) -> Json:
    """A non-streamed ``chat.completion``."""
    limit = _limit(body, "max_completion_tokens", "max_tokens")
    reasoning, words = _think(body, limit)
    prompt_tokens = max(1, count_words(body.get("messages")))
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", DEFAULT_MODEL),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": " ".join(words),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop" if len(words) == FULL_WORDS else "length",
            }
        ],
        "usage": _chat_usage(prompt_tokens, len(words), reasoning),
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }


def chat_stream(body: Json) -> list[bytes]:
    """The SSE events of a streamed chat completion, ending with ``data: [DONE]``."""
    reasoning, words = _think(body, _limit(body, "max_completion_tokens", "max_tokens"))
    include_usage = _include_usage(body)
    base: Json = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", DEFAULT_MODEL),
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }

    def chunk(delta: Json, finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        extra: Json = {"usage": None} if include_usage else {}
        return sse_data({**base, "choices": [choice], **extra})

    events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    events += [chunk({"content": piece}, None) for piece in _spaced(words)]
    events.append(chunk({}, "stop" if len(words) == FULL_WORDS else "length"))
    if include_usage:
        usage = _chat_usage(max(1, count_words(body.get("messages"))), len(words), reasoning)
        events.append(sse_data({**base, "choices": [], "usage": usage}))
    events.append(sse_data("[DONE]"))
    return events


def _prompt_tokens(body: Json) -> int:
    return max(1, count_words(body.get("prompt")))


def completion(body: Json) -> Json:
    """A non-streamed legacy ``text_completion``."""
    words = _output_words(_limit(body, "max_tokens"))
    prompt_tokens = _prompt_tokens(body)
    return {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", DEFAULT_MODEL),
        "choices": [
            {
                "text": " ".join(words),
                "index": 0,
                "logprobs": None,
                "finish_reason": "stop" if len(words) == FULL_WORDS else "length",
            }
        ],
        "usage": _chat_usage(prompt_tokens, len(words)),
        "system_fingerprint": "fp_mock",
    }


def completion_stream(body: Json) -> list[bytes]:
    """The SSE events of a streamed legacy completion, ending with ``data: [DONE]``."""
    words = _output_words(_limit(body, "max_tokens"))
    include_usage = _include_usage(body)
    base: Json = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", DEFAULT_MODEL),
        "system_fingerprint": "fp_mock",
    }

    def chunk(text: str, finish_reason: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        extra: Json = {"usage": None} if include_usage else {}
        return sse_data({**base, "choices": [choice], **extra})

    events = [chunk(piece, None) for piece in _spaced(words)]
    events.append(chunk("", "stop" if len(words) == FULL_WORDS else "length"))
    if include_usage:
        usage = _chat_usage(_prompt_tokens(body), len(words))
        events.append(sse_data({**base, "choices": [], "usage": usage}))
    events.append(sse_data("[DONE]"))
    return events


def _embedding_inputs(value: Any) -> list[Any]:
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


def embeddings(body: Json) -> Json:
    """A ``list`` of embeddings, one per input; base64 little-endian float32 when asked."""
    dimensions = body.get("dimensions")
    if not (isinstance(dimensions, int) and 0 < dimensions <= 4096):
        dimensions = EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    inputs = _embedding_inputs(body.get("input", ""))
    data = []
    for index, item in enumerate(inputs):
        seed = hashlib.shake_256(orjson.dumps(item)).digest(dimensions)
        # (b - 128) / 128 is exact in float32, so base64 and float encodings agree exactly.
        vector = [(b - 128) / 128 for b in seed]
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = max(1, count_words(inputs))
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "text-embedding-3-small"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model(model_id: str) -> Json:
    """One ``model`` object."""
    return {"id": model_id, "object": "model", "created": MODELS_CREATED, "owned_by": "system"}


def models() -> Json:
    """The model list."""
    return {"object": "list", "data": [model(model_id) for model_id in MODEL_IDS]}


def _response_usage(body: Json, output_tokens: int, reasoning_tokens: int = 0) -> Json:
    input_tokens = max(1, count_words(body.get("input")) + count_words(body.get("instructions")))
    output_tokens += reasoning_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _response_message(message_id: str, text: str, status: str) -> Json:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": message_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content if status == "completed" else [],
    }


def _response_object(body: Json, response_id: str, created_at: int) -> Json:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body.get("model", DEFAULT_MODEL),
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


def _finished_response(body: Json, response_id: str, created_at: int, message_id: str) -> Json:
    reasoning, words = _think(body, _limit(body, "max_output_tokens"))
    finished = _response_object(body, response_id, created_at)
    truncated = len(words) < FULL_WORDS
    # (usage before metadata, in the order OpenAI sends them: update() keeps the keys' places)
    finished.update(
        status="incomplete" if truncated else "completed",
        incomplete_details={"reason": "max_output_tokens"} if truncated else None,
        output=[_response_message(message_id, " ".join(words), "completed")],
        usage=_response_usage(body, len(words), reasoning),
    )
    return finished


def response(body: Json) -> Json:
    """A non-streamed Responses API ``response``."""
    return _finished_response(body, new_id("resp_"), int(time.time()), new_id("msg_"))


def response_stream(body: Json) -> list[bytes]:
    """The named SSE events of a streamed Responses API call (no ``[DONE]``, as OpenAI does)."""
    response_id, message_id, created_at = new_id("resp_"), new_id("msg_"), int(time.time())
    _, words = _think(body, _limit(body, "max_output_tokens"))
    text = " ".join(words)
    started = _response_object(body, response_id, created_at)
    finished = _finished_response(body, response_id, created_at, message_id)
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    payloads: list[Json] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _response_message(message_id, "", "in_progress"),
        },
        {"type": "response.content_part.added", **where, "part": part},
        *(
            {"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []}
            for delta in _spaced(words)
        ),
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": finished["output"][0]},
        {
            "type": "response.completed" if finished["status"] == "completed" else "response.incomplete",
            "response": finished,
        },
    ]
    return [sse_event({**payload, "sequence_number": n}) for n, payload in enumerate(payloads)]


def moderation(body: Json) -> Json:
    """A ``modr-`` result, unflagged, one result per input."""
    raw = body.get("input", "")
    count = len(raw) if isinstance(raw, list) else 1
    result = {
        "flagged": False,
        "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, 1e-06),
        "category_applied_input_types": {name: ["text"] for name in _MODERATION_CATEGORIES},
    }
    return {
        "id": new_id("modr-"),
        "model": body.get("model", "omni-moderation-latest"),
        "results": [result] * count,
    }


def image_generation(body: Json) -> Json:
    """An images response with ``n`` images, as b64_json or url like the request asks."""
    n = body.get("n")
    n = n if isinstance(n, int) and 0 < n <= 10 else 1
    model_name = str(body.get("model", "dall-e-2"))
    if body.get("response_format") == "b64_json" or model_name.startswith("gpt-image"):
        item: Json = {"b64_json": base64.b64encode(PNG_1X1).decode()}
    else:
        item = {"url": "https://mock-upstream.invalid/images/mock.png"}
    if isinstance(body.get("prompt"), str):
        item["revised_prompt"] = body["prompt"]
    return {"created": int(time.time()), "data": [dict(item) for _ in range(n)]}


def transcription() -> Json:
    """The JSON body of a transcription or translation."""
    return {"text": TRANSCRIPT_TEXT}


def stored_from_stream(path: str, request: Json, events: list[bytes]) -> Json | None:
    """What the upstream keeps of a streamed response (its final ``response``) or chat completion
    (the stream's id on a whole answer), read back from the events it sent."""
    for event in reversed(events):
        for line in event.split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            data = orjson.loads(line[6:])
            if path == "/v1/responses":
                if str(data.get("type", "")).startswith("response.") and isinstance(
                    data.get("response"), dict
                ):
                    found = data["response"]
                    if found.get("status") != "in_progress":
                        return found  # type: ignore[no-any-return]
            elif isinstance(data.get("id"), str):
                return {**chat_completion(request), "id": data["id"]}
    return None
