"""keygate.guards.objects: stored objects are isolated per client key, end to end with the SDK.

One gateway per module in front of the shared mock upstream (which keeps the objects). Every
refusal is checked twice: 404 in OpenAI's shape, and no request reached the upstream.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import BadRequestError, NotFoundError, OpenAI, PermissionDeniedError, RateLimitError

from keygate import routes
from keygate.context import Context
from keygate.guards.objects import StoredObjects, Visibility
from keygate.keycache import KeyCache
from keygate.limitconf import LimitSettings
from keygate.ownership import Ownership
from keygate.store import ObjectChange, SQLiteStore
from keygate.testing import MockUpstream
from keygate.types import KeyRecord

from ..helpers import UPSTREAM_SECRET, Gateway
from .common import CHAT_LINE, jsonl


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("objects"), upstream.url) as gateway:
        yield gateway


def client(gw: Gateway, *extra: str) -> OpenAI:
    return OpenAI(base_url=gw.url, api_key=gw.create_key("k", *extra)["key"], max_retries=0)


def refused(mock: MockUpstream, call: Any, param: str | None = None) -> dict[str, Any]:
    """``call()`` is a 404 in OpenAI's shape that never reached the upstream; its error object."""
    before = len(mock.requests)
    with pytest.raises(NotFoundError) as caught:
        call()
    assert len(mock.requests) == before, "the upstream was contacted"
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["param"] == param
    return body


def test_files_are_the_creators_own(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    made = a.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")
    assert made.id.startswith("file-")
    # the owner: retrieve, content, list, delete
    assert a.files.retrieve(made.id).id == made.id
    assert b"hello there" in a.files.content(made.id).content
    assert [f.id for f in a.files.list()] == [made.id]
    # another key: every by-id route and the list
    refused(mock, lambda: b.files.retrieve(made.id))
    refused(mock, lambda: b.files.content(made.id))
    refused(mock, lambda: b.files.delete(made.id))
    assert b.files.list().data == []
    assert a.files.delete(made.id).deleted
    refused(mock, lambda: a.files.retrieve(made.id))  # deleted: the record is gone too


def test_responses_and_their_references(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    first = a.responses.create(model="gpt-4o-mini", input="hi")
    assert a.responses.retrieve(first.id).id == first.id
    assert a.responses.input_items.list(first.id).data
    follow = a.responses.create(model="gpt-4o-mini", input="again", previous_response_id=first.id)
    assert follow.id != first.id
    refused(mock, lambda: b.responses.retrieve(first.id))
    refused(mock, lambda: b.responses.input_items.list(first.id))
    refused(mock, lambda: b.responses.cancel(first.id))
    refused(mock, lambda: b.responses.delete(first.id))
    err = refused(
        mock,
        lambda: b.responses.create(model="gpt-4o-mini", input="x", previous_response_id=first.id),
        "previous_response_id",
    )
    assert err["code"] == "object_not_found"
    # a streamed response is recorded from its first event: the owner may read it at once
    with a.responses.stream(model="gpt-4o-mini", input="stream me") as stream:
        final = stream.get_final_response()
    assert a.responses.retrieve(final.id).id == final.id
    refused(mock, lambda: b.responses.retrieve(final.id))
    # store: false creates nothing keygate records
    unstored = a.responses.create(model="gpt-4o-mini", input="x", store=False)
    refused(mock, lambda: a.responses.retrieve(unstored.id))
    a.responses.delete(first.id)
    refused(mock, lambda: a.responses.retrieve(first.id))


def test_file_references_in_bodies(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    doc = a.files.create(file=("doc.txt", io.BytesIO(b"text")), purpose="user_data")
    part = [{"role": "user", "content": [{"type": "input_file", "file_id": doc.id}]}]
    refused(mock, lambda: b.responses.create(model="gpt-4o-mini", input=part), "file_id")  # type: ignore[arg-type]
    chat_part = [{"role": "user", "content": [{"type": "file", "file": {"file_id": doc.id}}]}]
    refused(mock, lambda: b.chat.completions.create(model="gpt-4o-mini", messages=chat_part), "file_id")  # type: ignore[arg-type]
    assert a.chat.completions.create(model="gpt-4o-mini", messages=chat_part).id  # type: ignore[arg-type]
    refused(mock, lambda: b.vector_stores.create(name="x", file_ids=[doc.id]), "file_ids")
    vs = a.vector_stores.create(name="mine", file_ids=[doc.id])
    tools = [{"type": "file_search", "vector_store_ids": [vs.id]}]
    refused(mock, lambda: b.responses.create(model="gpt-4o-mini", input="q", tools=tools), "vector_store_ids")  # type: ignore[arg-type]
    assert a.responses.create(model="gpt-4o-mini", input="q", tools=tools).id  # type: ignore[arg-type]
    refused(
        mock,
        lambda: b.batches.create(
            input_file_id=doc.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
        "input_file_id",
    )
    other = b.vector_stores.create(name="theirs")
    refused(mock, lambda: b.vector_stores.files.create(other.id, file_id=doc.id), "file_id")
    refused(mock, lambda: b.vector_stores.file_batches.create(other.id, file_ids=[doc.id]), "file_ids")


def test_vector_stores(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    doc = a.files.create(file=("doc.txt", io.BytesIO(b"text")), purpose="assistants")
    vs = a.vector_stores.create(name="v")
    assert a.vector_stores.retrieve(vs.id).name == "v"
    assert a.vector_stores.update(vs.id, name="w").name == "w"
    assert a.vector_stores.files.create(vs.id, file_id=doc.id).id == doc.id
    assert [f.id for f in a.vector_stores.files.list(vs.id)] == [doc.id]
    assert a.vector_stores.files.retrieve(doc.id, vector_store_id=vs.id).id == doc.id
    fb = a.vector_stores.file_batches.create(vs.id, file_ids=[doc.id])
    assert a.vector_stores.file_batches.retrieve(fb.id, vector_store_id=vs.id).id == fb.id
    assert a.vector_stores.file_batches.list_files(fb.id, vector_store_id=vs.id).data
    assert a.vector_stores.search(vs.id, query="q").data == []
    assert [v.id for v in a.vector_stores.list()] == [vs.id]
    assert b.vector_stores.list().data == []
    for call in (
        lambda: b.vector_stores.retrieve(vs.id),
        lambda: b.vector_stores.update(vs.id, name="x"),
        lambda: b.vector_stores.search(vs.id, query="q"),
        lambda: b.vector_stores.files.list(vs.id),
        lambda: b.vector_stores.files.retrieve(doc.id, vector_store_id=vs.id),
        lambda: b.vector_stores.files.delete(doc.id, vector_store_id=vs.id),
        lambda: b.vector_stores.file_batches.retrieve(fb.id, vector_store_id=vs.id),
        lambda: b.vector_stores.delete(vs.id),
    ):
        refused(mock, call)
    assert a.vector_stores.files.delete(doc.id, vector_store_id=vs.id).deleted
    assert a.vector_stores.delete(vs.id).deleted
    refused(mock, lambda: a.vector_stores.retrieve(vs.id))


def test_conversations(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    conv = a.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
    assert a.conversations.retrieve(conv.id).id == conv.id
    assert a.conversations.update(conv.id, metadata={"k": "v"}).metadata == {"k": "v"}
    (item,) = a.conversations.items.list(conv.id).data
    assert a.conversations.items.retrieve(item.id, conversation_id=conv.id).id == item.id
    added = a.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": "more"}]
    )
    assert added.data
    assert a.responses.create(model="gpt-4o-mini", input="x", conversation=conv.id).id
    assert a.responses.create(model="gpt-4o-mini", input="x", conversation={"id": conv.id}).id
    for call in (
        lambda: b.conversations.retrieve(conv.id),
        lambda: b.conversations.update(conv.id, metadata={}),
        lambda: b.conversations.items.list(conv.id),
        lambda: b.conversations.items.retrieve(item.id, conversation_id=conv.id),
        lambda: b.conversations.items.delete(item.id, conversation_id=conv.id),
        lambda: b.conversations.delete(conv.id),
    ):
        refused(mock, call)
    refused(
        mock, lambda: b.responses.create(model="gpt-4o-mini", input="x", conversation=conv.id), "conversation"
    )
    refused(
        mock,
        lambda: b.responses.create(model="gpt-4o-mini", input="x", conversation={"id": conv.id}),
        "conversation",
    )
    a.conversations.items.delete(item.id, conversation_id=conv.id)
    assert a.conversations.delete(conv.id).deleted
    refused(mock, lambda: a.conversations.retrieve(conv.id))


def test_stored_chat_completions(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    messages = [{"role": "user", "content": "hi"}]
    stored = a.chat.completions.create(model="gpt-4o-mini", messages=messages, store=True)  # type: ignore[arg-type]
    unstored = a.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    assert a.chat.completions.retrieve(stored.id).id == stored.id
    assert a.chat.completions.messages.list(stored.id).data
    assert a.chat.completions.update(stored.id, metadata={"a": "b"}).id == stored.id
    assert [c.id for c in a.chat.completions.list()] == [stored.id]
    assert b.chat.completions.list().data == []
    refused(mock, lambda: a.chat.completions.retrieve(unstored.id))
    for call in (
        lambda: b.chat.completions.retrieve(stored.id),
        lambda: b.chat.completions.messages.list(stored.id),
        lambda: b.chat.completions.update(stored.id, metadata={}),
        lambda: b.chat.completions.delete(stored.id),
    ):
        refused(mock, call)
    assert a.chat.completions.delete(stored.id).deleted


def test_uploads(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    up = a.uploads.create(bytes=4, filename="u.txt", mime_type="text/plain", purpose="assistants")
    refused(mock, lambda: b.uploads.parts.create(up.id, data=io.BytesIO(b"ab")))
    refused(mock, lambda: b.uploads.cancel(up.id))
    part = a.uploads.parts.create(up.id, data=io.BytesIO(b"abcd"))
    refused(mock, lambda: b.uploads.complete(up.id, part_ids=[part.id]))
    done = a.uploads.complete(up.id, part_ids=[part.id])
    assert done.file is not None
    assert a.files.content(done.file.id).content == b"abcd"  # the upload's file is the uploader's
    refused(mock, lambda: b.files.retrieve(done.file.id))  # type: ignore[union-attr]
    other = a.uploads.create(bytes=1, filename="v.txt", mime_type="text/plain", purpose="assistants")
    assert a.uploads.cancel(other.id).status == "cancelled"


def test_batches_follow_the_keys_policy(gw: Gateway, mock: MockUpstream) -> None:
    a, b = client(gw), client(gw)
    made = a.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")
    batch = a.batches.create(input_file_id=made.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert a.batches.retrieve(batch.id).status == "completed"
    assert [x.id for x in a.batches.list()] == [batch.id]
    assert b.batches.list().data == []
    refused(mock, lambda: b.batches.retrieve(batch.id))
    refused(mock, lambda: b.batches.cancel(batch.id))
    done = a.batches.retrieve(batch.id)
    assert done.output_file_id
    out = a.files.content(done.output_file_id).content  # the output file is the batch owner's
    assert b"chat.completion" in out
    refused(mock, lambda: b.files.content(done.output_file_id))  # type: ignore[arg-type]
    assert a.batches.cancel(batch.id).id == batch.id

    # a key allowed one model only: a batch naming another is refused at creation
    narrow = client(gw, "--allow-model", "gpt-4o")
    upload = narrow.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")  # no model: allowed
    before = len(mock.requests)
    with pytest.raises(PermissionDeniedError) as caught:
        narrow.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert len(mock.requests) == before
    assert caught.value.code == "model_not_allowed" and "gpt-4o-mini" in caught.value.message
    allowed = {**CHAT_LINE, "body": {**CHAT_LINE["body"], "model": "gpt-4o"}}  # type: ignore[dict-item]
    ok = narrow.files.create(file=("ok.jsonl", jsonl(allowed)), purpose="batch")
    assert narrow.batches.create(
        input_file_id=ok.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    # and a route it may not use
    routes_only = client(gw, "--allow-route", "files", "--allow-route", "batches")
    file2 = routes_only.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")
    with pytest.raises(PermissionDeniedError) as caught:
        routes_only.batches.create(
            input_file_id=file2.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.code == "route_not_allowed"


def test_a_batch_holds_its_worst_case_on_the_budget(gw: Gateway, mock: MockUpstream) -> None:
    # one line: about 30 prompt tokens (its body's bytes / 4) + 50 output tokens held
    key = gw.create_key("budgeted", "--budget-tokens", "120")
    sdk = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    small = sdk.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=small.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    before = len(mock.requests)
    with pytest.raises(RateLimitError) as caught:  # the first one's hold leaves too little
        sdk.batches.create(input_file_id=small.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert caught.value.code == "insufficient_quota" and len(mock.requests) == before
    # its results, once read, settle the hold to what the lines used (the mock's usage: a few)
    done = sdk.batches.retrieve(batch.id)
    sdk.files.content(done.output_file_id)  # type: ignore[arg-type]
    sdk.files.content(done.output_file_id)  # type: ignore[arg-type]  (settled once only)

    def reads() -> list[dict[str, Any]]:
        entries = gw.access_entries(timeout=0)
        return [e for e in entries if e.get("path", "").endswith("/content") and e.get("key_id") == key["id"]]

    deadline = time.monotonic() + 5
    while len(reads()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    first, second = reads()
    assert first["prompt_tokens"] > 0 and first["completion_tokens"] > 0  # the lines' usage, once
    assert second["prompt_tokens"] == second["completion_tokens"] == 0
    assert sdk.batches.create(
        input_file_id=small.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id
    # a batch input file keygate has no summary of is refused under a budget
    direct = OpenAI(base_url=mock.url, api_key=UPSTREAM_SECRET, max_retries=0)
    outside = direct.files.create(file=("o.jsonl", jsonl(CHAT_LINE)), purpose="batch")
    gw.cli("objects", "assign", outside.id, "--key", key["id"])
    with pytest.raises(BadRequestError) as refused_batch:
        sdk.batches.create(input_file_id=outside.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused_batch.value.code == "batch_input_not_checked"


def test_team_sharing(gw: Gateway, mock: MockUpstream) -> None:
    gw.cli("teams", "create", "sharers", "--share-objects", "team")
    gw.cli("teams", "create", "loners")
    mate1, mate2 = client(gw, "--team", "sharers"), client(gw, "--team", "sharers")
    outsider = client(gw, "--team", "loners")
    made = mate1.files.create(file=("a.txt", io.BytesIO(b"x")), purpose="user_data")
    assert mate2.files.retrieve(made.id).id == made.id
    assert made.id in [f.id for f in mate2.files.list()]
    refused(mock, lambda: outsider.files.retrieve(made.id))
    # a key that keeps its objects to itself, in a sharing team
    private = client(gw, "--team", "sharers", "--share-objects", "key")
    mine = private.files.create(file=("b.txt", io.BytesIO(b"y")), purpose="user_data")
    refused(mock, lambda: mate1.files.retrieve(mine.id))
    # a loner team's keys share nothing by default
    loner2 = client(gw, "--team", "loners")
    theirs = outsider.files.create(file=("c.txt", io.BytesIO(b"z")), purpose="user_data")
    refused(mock, lambda: loner2.files.retrieve(theirs.id))


def test_a_rotated_key_keeps_its_objects(gw: Gateway) -> None:
    key = gw.create_key("rotating")
    made = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0).files.create(
        file=("a.txt", io.BytesIO(b"x")), purpose="user_data"
    )
    rotated = orjson.loads(gw.cli("keys", "rotate", key["id"], "--json").stdout)
    gw.secrets.append(rotated["key"])
    assert (
        OpenAI(base_url=gw.url, api_key=rotated["key"], max_retries=0).files.retrieve(made.id).id == made.id
    )


def test_objects_made_elsewhere_belong_to_no_key(gw: Gateway, mock: MockUpstream) -> None:
    direct = OpenAI(base_url=mock.url, api_key=UPSTREAM_SECRET, max_retries=0)
    outside = direct.files.create(file=("o.txt", io.BytesIO(b"o")), purpose="user_data")
    sdk = client(gw)
    refused(mock, lambda: sdk.files.retrieve(outside.id))
    assert outside.id not in [f.id for f in sdk.files.list()]


def test_query_parameters_are_the_routes_own(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("raw")["key"]
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}) as http:
        r = http.get("/files", params={"limit": "2", "purpose": "batch", "order": "asc"})
        assert r.status_code == 200 and r.json()["data"] == []
        r = http.get("/files", params={"include": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
        r = http.get("/batches", params={"order": "asc"})
        assert r.status_code == 400
        # a by-id route of another kind's id: the id is not one of this key's files
        r = http.get("/files/vs_123")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_batch_the_upstream_refuses_releases_its_hold(gw: Gateway, mock: MockUpstream) -> None:
    key = gw.create_key("refused", "--budget-tokens", "120")  # room for one line's hold, not two
    sdk = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
    source = sdk.files.create(file=("in.jsonl", jsonl(CHAT_LINE)), purpose="batch")
    error = {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
    mock.reply_next(400, error)
    with pytest.raises(BadRequestError):
        sdk.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert sdk.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def test_the_ownership_check_of_a_by_id_route_costs_at_most_5_microseconds(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db")
    store.migrate()
    store.write_objects([ObjectChange(f"file-{n}", "file", f"key_{n % 2}", 0.0) for n in range(10_000)])
    guard = StoredObjects(Visibility(Ownership(store), KeyCache(store)), LimitSettings(), None)
    owner = KeyRecord("key_1", "a", "h", "h", 0.0)
    mine, theirs = (Context("r", "GET", f"/v1/files/file-{n}", "", {}, "") for n in (5, 4))
    for ctx in (mine, theirs):
        ctx.route, ctx.key = routes.match("GET", ctx.path), owner
    assert guard.request(mine) is None and guard.request(theirs) is not None
    for ctx in (mine, theirs):
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _i in range(10_000):
                guard.request(ctx)
            best = min(best, (time.perf_counter() - start) / 10_000)
        assert best < 5e-6, f"{best * 1e6:.2f} µs"
    store.close()
