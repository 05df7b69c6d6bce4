"""keygate.object_lists: lists of stored objects hold the caller's only, and page correctly even
when other keys' objects are interleaved upstream."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from keygate import object_lists
from keygate.testing import MockUpstream

from .helpers import UPSTREAM_SECRET, Gateway


@pytest.fixture(scope="module")
def gw(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("lists"), upstream.url) as gateway:
        yield gateway


def test_lists_over_interleaved_objects_page_correctly(gw: Gateway, mock: MockUpstream) -> None:
    a_key, b_key = gw.create_key("a")["key"], gw.create_key("b")["key"]
    a = OpenAI(base_url=gw.url, api_key=a_key, max_retries=0)
    b = OpenAI(base_url=gw.url, api_key=b_key, max_retries=0)
    direct = OpenAI(base_url=mock.url, api_key=UPSTREAM_SECRET, max_retries=0)
    for n in range(260):  # a, b, b, a, (and one made on the account directly every tenth)
        (a if n % 4 in (0, 3) else b).files.create(file=(f"{n}.txt", io.BytesIO(b"x")), purpose="user_data")
        made = mock.requests[-1]
        assert made.path == "/v1/files"
        if n % 10 == 0:
            direct.files.create(file=("o.txt", io.BytesIO(b"o")), purpose="user_data")
    listed_upstream = [f.id for f in direct.files.list(limit=10000)]  # newest first
    owners = {f.id: f for f in a.files.list(limit=100).data}  # the first page alone
    assert len(owners) == 100
    mine = [f.id for f in a.files.list(limit=7)]  # every page, the SDK following after=last_id
    theirs = [f.id for f in b.files.list(limit=100)]
    assert len(mine) == 130 and len(theirs) == 130 and not set(mine) & set(theirs)
    assert mine == [i for i in listed_upstream if i in set(mine)]  # the upstream's order, no gaps
    assert theirs == [i for i in listed_upstream if i in set(theirs)]

    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {a_key}"}) as http:
        page = http.get("/files", params={"limit": "5"}).json()
        assert [f["id"] for f in page["data"]] == mine[:5]
        assert page["first_id"] == mine[0] and page["last_id"] == mine[4] and page["has_more"] is True
        nxt = http.get("/files", params={"limit": "5", "after": page["last_id"]}).json()
        assert [f["id"] for f in nxt["data"]] == mine[5:10]
        end = http.get("/files", params={"limit": "100", "after": mine[-3]}).json()
        assert [f["id"] for f in end["data"]] == mine[-2:] and end["has_more"] is False
        asc = http.get("/files", params={"limit": "3", "order": "asc"}).json()
        assert [f["id"] for f in asc["data"]] == list(reversed(mine))[:3]


def test_before_pages_backwards(gw: Gateway, mock: MockUpstream) -> None:
    a_key, b_key = gw.create_key("a")["key"], gw.create_key("b")["key"]
    a = OpenAI(base_url=gw.url, api_key=a_key, max_retries=0)
    b = OpenAI(base_url=gw.url, api_key=b_key, max_retries=0)
    ids = []
    for n in range(12):
        ids.append(a.vector_stores.create(name=str(n)).id)
        b.vector_stores.create(name=str(n))
    newest_first = list(reversed(ids))
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {a_key}"}) as http:
        page = http.get("/vector_stores", params={"limit": "3", "before": newest_first[6]}).json()
        assert [v["id"] for v in page["data"]] == newest_first[3:6]
        assert page["has_more"] is True


def test_the_work_is_bounded(gw: Gateway, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(object_lists, "MAX_PAGES", 2)
    monkeypatch.setattr(object_lists, "UPSTREAM_PAGE", 3)
    a_key = gw.create_key("a")["key"]
    a = OpenAI(base_url=gw.url, api_key=a_key, max_retries=0)
    direct = OpenAI(base_url=mock.url, api_key=UPSTREAM_SECRET, max_retries=0)
    kept = a.files.create(file=("k.txt", io.BytesIO(b"k")), purpose="user_data")
    for _ in range(10):
        direct.files.create(file=("o.txt", io.BytesIO(b"o")), purpose="user_data")
    before = len(mock.requests)
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {a_key}"}) as http:
        page = http.get("/files", params={"limit": "5"}).json()
    assert len(mock.requests) - before == 2  # two upstream pages of three, no more
    assert page["data"] == [] and page["has_more"] is True and page["last_id"] is None
    assert kept.id
