"""The mock upstream's vector stores, conversations, stored responses and chat completions (the
rest of :mod:`keygate.testing._objects`, which mixes this in: the state lives there)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson

from ._page import Kind, Result, page
from ._payloads import Json, new_id


class StoresMixin:
    """Routes of :class:`~keygate.testing._objects.Objects` for vector stores, conversations,
    stored responses and chat completions."""

    if TYPE_CHECKING:
        vector_stores: Kind
        conversations: Kind
        responses: Kind
        chats: Kind
        contents: dict[str, bytes]
        vs_files: dict[str, dict[str, Json]]
        vs_batches: dict[str, dict[str, Json]]
        items: dict[str, list[Json]]
        messages: dict[str, list[Json]]

        @staticmethod
        def _missing(what: str = "object") -> Result: ...

    # -- vector stores ----------------------------------------------------------------------------

    def _vs_file(self, vs_id: str, file_id: str) -> Json:
        entry: Json = {
            "id": file_id,
            "object": "vector_store.file",
            "created_at": int(time.time()),
            "vector_store_id": vs_id,
            "status": "completed",
            "usage_bytes": len(self.contents.get(file_id, b"")),
            "last_error": None,
            "attributes": {},
        }
        self.vs_files.setdefault(vs_id, {})[file_id] = entry
        return entry

    def _vs_create(self, q: dict[str, str], body: bytes, ctype: str) -> Result:
        data = orjson.loads(body or b"{}")
        store: Json = {
            "id": new_id("vs_"),
            "object": "vector_store",
            "created_at": int(time.time()),
            "name": data.get("name"),
            "usage_bytes": 0,
            "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0},
            "status": "completed",
            "last_active_at": int(time.time()),
            "metadata": data.get("metadata") or {},
        }
        self.vector_stores.items[store["id"]] = store
        self.vs_files[store["id"]] = {}
        for file_id in data.get("file_ids") or []:
            self._vs_file(store["id"], file_id)
        return 200, store

    def _vs_search(self, q: dict[str, str], body: bytes, ctype: str, vs_id: str) -> Result:
        if vs_id not in self.vector_stores.items:
            return self._missing("vector store")
        query = orjson.loads(body).get("query")
        return 200, {
            "object": "vector_store.search_results.page",
            "search_query": [query],
            "data": [],
            "has_more": False,
            "next_page": None,
        }

    def _vs_file_add(self, q: dict[str, str], body: bytes, ctype: str, vs_id: str) -> Result:
        if vs_id not in self.vector_stores.items:
            return self._missing("vector store")
        return 200, self._vs_file(vs_id, orjson.loads(body)["file_id"])

    def _vs_files(self, q: dict[str, str], body: bytes, ctype: str, vs_id: str) -> Result:
        if vs_id not in self.vector_stores.items:
            return self._missing("vector store")
        return 200, page(list(self.vs_files.get(vs_id, {}).values()), q)

    def _vs_file_get(self, q: dict[str, str], body: bytes, ctype: str, vs_id: str, file_id: str) -> Result:
        found = self.vs_files.get(vs_id, {}).get(file_id)
        return (200, found) if found is not None else self._missing("file")

    def _vs_file_delete(self, q: dict[str, str], body: bytes, ctype: str, vs_id: str, file_id: str) -> Result:
        if self.vs_files.get(vs_id, {}).pop(file_id, None) is None:
            return self._missing("file")
        return 200, {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    def _vs_batch_create(self, q: dict[str, str], body: bytes, ctype: str, vs_id: str) -> Result:
        if vs_id not in self.vector_stores.items:
            return self._missing("vector store")
        ids = orjson.loads(body).get("file_ids") or []
        for file_id in ids:
            self._vs_file(vs_id, file_id)
        batch: Json = {
            "id": new_id("vsfb_"),
            "object": "vector_store.files_batch",
            "created_at": int(time.time()),
            "vector_store_id": vs_id,
            "status": "completed",
            "file_counts": {
                "in_progress": 0,
                "completed": len(ids),
                "failed": 0,
                "cancelled": 0,
                "total": len(ids),
            },
        }
        self.vs_batches.setdefault(vs_id, {})[batch["id"]] = batch
        return 200, batch

    def _vs_batch_get(self, q: dict[str, str], body: bytes, ctype: str, vs_id: str, batch_id: str) -> Result:
        found = self.vs_batches.get(vs_id, {}).get(batch_id)
        return (200, found) if found is not None else self._missing("file batch")

    # -- conversations --------------------------------------------------------------------------

    def _conv_create(self, q: dict[str, str], body: bytes, ctype: str) -> Result:
        data = orjson.loads(body or b"{}")
        conv: Json = {
            "id": new_id("conv_"),
            "object": "conversation",
            "created_at": int(time.time()),
            "metadata": data.get("metadata") or {},
        }
        self.conversations.items[conv["id"]] = conv
        self.items[conv["id"]] = [self._item(i) for i in data.get("items") or []]
        return 200, conv

    @staticmethod
    def _item(item: Json) -> Json:
        return {"id": new_id("msg_"), "type": "message", "status": "completed", **item}

    def _conv_items(self, q: dict[str, str], body: bytes, ctype: str, conv_id: str) -> Result:
        if conv_id not in self.conversations.items:
            return self._missing("conversation")
        return 200, page(self.items.get(conv_id, []), q)

    def _conv_add_items(self, q: dict[str, str], body: bytes, ctype: str, conv_id: str) -> Result:
        if conv_id not in self.conversations.items:
            return self._missing("conversation")
        added = [self._item(i) for i in orjson.loads(body).get("items") or []]
        self.items.setdefault(conv_id, []).extend(added)
        return 200, {
            "object": "list",
            "data": added,
            "first_id": added[0]["id"] if added else None,
            "last_id": added[-1]["id"] if added else None,
            "has_more": False,
        }

    def _conv_item(self, q: dict[str, str], body: bytes, ctype: str, conv_id: str, item_id: str) -> Result:
        found = next((i for i in self.items.get(conv_id, []) if i["id"] == item_id), None)
        return (200, found) if found is not None else self._missing("item")

    def _conv_item_delete(
        self, q: dict[str, str], body: bytes, ctype: str, conv_id: str, item_id: str
    ) -> Result:
        items = self.items.get(conv_id, [])
        self.items[conv_id] = [i for i in items if i["id"] != item_id]
        conv = self.conversations.items.get(conv_id)
        return (200, conv) if conv is not None else self._missing("conversation")

    # -- stored responses and chat completions --------------------------------------------------

    def _response_cancel(self, q: dict[str, str], body: bytes, ctype: str, response_id: str) -> Result:
        found = self.responses.items.get(response_id)
        if found is None:
            return self._missing("response")
        found["status"] = "cancelled"
        return 200, found

    def _input_items(self, q: dict[str, str], body: bytes, ctype: str, response_id: str) -> Result:
        if response_id not in self.responses.items:
            return self._missing("response")
        return 200, page(self.items.get(response_id, []), q)

    def _chat_list(self, q: dict[str, str], body: bytes, ctype: str) -> Result:
        items = [c for c in self.chats.items.values() if "model" not in q or c.get("model") == q["model"]]
        return 200, page(items, q, "asc")

    def _chat_messages(self, q: dict[str, str], body: bytes, ctype: str, chat_id: str) -> Result:
        if chat_id not in self.chats.items:
            return self._missing("chat completion")
        return 200, page(self.messages.get(chat_id, []), q, "asc")
