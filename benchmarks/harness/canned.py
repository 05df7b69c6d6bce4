"""Canned OpenAI-shaped response bodies the mock upstream returns."""

from __future__ import annotations

import json
from typing import Any

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_700_000_000
USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def chat_completion() -> str:
    return _dumps(
        {
            "id": "chatcmpl-bench0001",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello there, nice to meet you!",
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "system_fingerprint": "fp_bench",
        }
    )


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench0002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def chat_completion_stream() -> str:
    """An SSE body: role, four content pieces, finish, a usage chunk with no choices, [DONE]."""
    chunks = [_chunk({"role": "assistant", "content": ""})]
    chunks += [_chunk({"content": piece}) for piece in ("Hello", " there,", " nice to meet", " you!")]
    chunks.append(_chunk({}, finish_reason="stop"))
    usage_chunk = _chunk({})
    usage_chunk["choices"] = []
    usage_chunk["usage"] = USAGE
    chunks.append(usage_chunk)
    events = [f"data: {_dumps(chunk)}\n\n" for chunk in chunks]
    return "".join(events) + "data: [DONE]\n\n"


def models() -> str:
    return _dumps(
        {
            "object": "list",
            "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": CREATED, "owned_by": "system"},
                {"id": "text-embedding-3-small", "object": "model", "created": CREATED, "owned_by": "system"},
            ],
        }
    )


def embeddings() -> str:
    vector = [0.0023064255, -0.009327292, 0.015797347, -0.0077780345, -0.0046922187, 0.014060028]
    return _dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    )


def not_found() -> str:
    return _dumps(
        {
            "error": {
                "message": "Unknown path on the benchmark mock upstream.",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        }
    )
