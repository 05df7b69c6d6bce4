"""keygate.testing._objects: the mock upstream keeps stored objects, with OpenAI's ids and paging,
for the official SDK to create, read, page and delete."""

from __future__ import annotations

import io

import openai
import orjson
import pytest
from openai import OpenAI

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET


@pytest.fixture
def sdk(mock: MockUpstream) -> OpenAI:
    return OpenAI(base_url=mock.url, api_key=UPSTREAM_SECRET, max_retries=0)


def test_files_page_and_delete(sdk: OpenAI) -> None:
    made = [
        sdk.files.create(file=(f"{n}.txt", io.BytesIO(b"%d" % n)), purpose="user_data").id for n in range(25)
    ]
    assert all(i.startswith("file-") for i in made)
    assert [f.id for f in sdk.files.list(limit=4)] == list(reversed(made))  # newest first, every page
    page = sdk.files.list(limit=10, order="asc")
    assert [f.id for f in page.data] == made[:10] and page.has_more
    assert sdk.files.content(made[3]).content == b"3"
    assert sdk.files.delete(made[3]).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(made[3])


def test_batches_complete_at_once_with_usage(sdk: OpenAI) -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    source = sdk.files.create(file=("in.jsonl", io.BytesIO(orjson.dumps(line) + b"\n")), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.id.startswith("batch_") and batch.status == "completed" and batch.output_file_id
    (out,) = [orjson.loads(x) for x in sdk.files.content(batch.output_file_id).content.splitlines()]
    assert out["custom_id"] == "a" and out["response"]["body"]["usage"]["completion_tokens"] > 0
    assert [b.id for b in sdk.batches.list()] == [batch.id]


def test_stored_responses_chats_conversations_and_vector_stores(sdk: OpenAI) -> None:
    r = sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert r.id.startswith("resp_") and sdk.responses.retrieve(r.id).id == r.id
    assert sdk.responses.input_items.list(r.id).data
    unstored = sdk.responses.create(model="gpt-4o-mini", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)
    c = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], store=True
    )
    assert c.id.startswith("chatcmpl-") and sdk.chat.completions.retrieve(c.id).id == c.id
    assert sdk.chat.completions.messages.list(c.id).data[0].content == "x"
    conv = sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
    assert conv.id.startswith("conv_") and sdk.conversations.items.list(conv.id).data
    vs = sdk.vector_stores.create(name="v")
    assert vs.id.startswith("vs_") and sdk.vector_stores.retrieve(vs.id).name == "v"
    assert sdk.vector_stores.delete(vs.id).deleted
