"""The official openai SDK, unchanged, through a real keygate in front of the mock upstream."""

from __future__ import annotations

import asyncio

import openai
import pytest

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET, Gateway


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key=key, max_retries=0, timeout=10)


def test_chat_completion(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    reply = sdk(gateway, client_key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello to me"}]
    )
    assert reply.choices[0].message.content == "Hello from mock"
    assert reply.usage is not None and reply.usage.prompt_tokens == 4
    (seen,) = mock.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert seen.json()["model"] == "gpt-4o-mini"


def test_streamed_chat_hides_injected_usage_chunk(
    gateway: Gateway, client_key: str, mock: MockUpstream
) -> None:
    stream = sdk(gateway, client_key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.replace(" ", "") == "Hellofrommock"
    assert all(c.choices for c in chunks), "the usage chunk keygate asked for must not reach this client"
    assert mock.requests[0].json()["stream_options"] == {"include_usage": True}
    rid = stream.response.headers["x-keygate-request-id"]
    entry = gateway.wait_entry(lambda e: e["request_id"] == rid)
    assert entry["stream"] is True
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (3, 3)


def test_streamed_chat_with_usage_requested(gateway: Gateway, client_key: str) -> None:
    stream = sdk(gateway, client_key).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "a b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2


def test_async_client_stream_and_not(gateway: Gateway, client_key: str) -> None:
    async def go() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=gateway.url, api_key=client_key, max_retries=0)
        whole = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
        parts = []
        async for chunk in await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
        await client.close()
        return whole.choices[0].message.content or "", "".join(parts)

    whole, streamed = asyncio.run(go())
    assert whole == "Hello from mock"
    assert streamed.replace(" ", "") == "Hellofrommock"


def test_other_routes(gateway: Gateway, client_key: str, mock: MockUpstream) -> None:
    client = sdk(gateway, client_key)
    assert client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi").choices
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert any(m.id == "gpt-4o" for m in client.models.list())
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    assert client.responses.create(model="gpt-4o", input="hi").output_text == "Hello from mock"
    assert client.moderations.create(input="hi").results
    assert client.images.generate(model="dall-e-3", prompt="a cat").data
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert speech.content
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"ID3fake", "audio/mpeg"))
    assert text.text
    paths = [r.path for r in mock.requests]
    assert paths == [
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/gpt-4o",
        "/v1/responses",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
    ]


def test_responses_stream_usage_recorded(gateway: Gateway, client_key: str) -> None:
    stream = sdk(gateway, client_key).responses.create(model="gpt-4o", input="count these words", stream=True)
    events = list(stream)
    assert events[-1].type == "response.completed"
    rid = stream.response.headers["x-keygate-request-id"]
    entry = gateway.wait_entry(lambda e: e["request_id"] == rid)
    assert entry["prompt_tokens"] == 3 and entry["stream"] is True


def test_wrong_key_is_authentication_error(gateway: Gateway, mock: MockUpstream) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "kg_" + "A" * 38).models.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, UPSTREAM_SECRET).models.list()
    assert mock.requests == []


def test_revoke_takes_effect_on_next_request(gateway: Gateway, mock: MockUpstream) -> None:
    created = gateway.create_key("to-revoke")
    client = sdk(gateway, created["key"])
    client.models.list()
    gateway.cli("keys", "revoke", created["id"])
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.models.list()
    assert len(mock.requests) == 1
