"""Stored objects of the mock upstream: files, uploads, batches, vector stores, conversations, stored
responses and chat completions, kept in memory with OpenAI-like ids and cursor pagination.

Enough of each API for the official SDK to create, read, list, page, update and delete them. A
batch completes at once: its output file holds one answer per input line (the mock's own chat,
embeddings or responses answer for the line's body, with its usage). No I/O here: the mock's
handler calls :meth:`Objects.handle` with the request and sends the reply it returns.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import orjson

from ..multipart import FieldScanner, FormError, boundary_of
from ._page import Kind, Result, page
from ._payloads import Json, chat_completion, embeddings, new_id, response
from ._stores import StoresMixin

_BODY_LIMIT = 64 * 1024 * 1024
_ID = r"([A-Za-z0-9._:-]+)"


class Objects(StoresMixin):
    """Every stored object of one mock upstream, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files, self.uploads, self.batches = Kind(), Kind(), Kind()
        self.vector_stores, self.conversations = Kind(), Kind()
        self.responses, self.chats = Kind(), Kind()
        self.contents: dict[str, bytes] = {}
        self.parts: dict[str, list[tuple[str, bytes]]] = {}
        self.vs_files: dict[str, dict[str, Json]] = {}
        self.vs_batches: dict[str, dict[str, Json]] = {}
        self.items: dict[str, list[Json]] = {}  # conversation items, response input items
        self.messages: dict[str, list[Json]] = {}  # stored chat completions' messages
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Result]]] = [
            (m, re.compile("^/v1/" + p.replace("{}", _ID) + "$"), f)
            for m, p, f in (
                ("POST", "files", self._file_create),
                ("GET", "files", lambda q, b, c: (200, page(list(self.files.items.values()), q))),
                ("GET", "files/{}", lambda q, b, c, i: self._get(self.files, i)),
                ("DELETE", "files/{}", lambda q, b, c, i: self._delete(self.files, i, "file")),
                ("GET", "files/{}/content", self._file_content),
                ("POST", "uploads", self._upload_create),
                ("POST", "uploads/{}/parts", self._upload_part),
                ("POST", "uploads/{}/complete", self._upload_complete),
                ("POST", "uploads/{}/cancel", self._upload_cancel),
                ("POST", "batches", self._batch_create),
                ("GET", "batches", lambda q, b, c: (200, page(list(self.batches.items.values()), q))),
                ("GET", "batches/{}", lambda q, b, c, i: self._get(self.batches, i)),
                ("POST", "batches/{}/cancel", self._batch_cancel),
                ("POST", "vector_stores", self._vs_create),
                (
                    "GET",
                    "vector_stores",
                    lambda q, b, c: (200, page(list(self.vector_stores.items.values()), q)),
                ),
                ("GET", "vector_stores/{}", lambda q, b, c, i: self._get(self.vector_stores, i)),
                ("POST", "vector_stores/{}", lambda q, b, c, i: self._update(self.vector_stores, i, b)),
                (
                    "DELETE",
                    "vector_stores/{}",
                    lambda q, b, c, i: self._delete(self.vector_stores, i, "vector_store.deleted"),
                ),
                ("POST", "vector_stores/{}/search", self._vs_search),
                ("POST", "vector_stores/{}/files", self._vs_file_add),
                ("GET", "vector_stores/{}/files", self._vs_files),
                ("GET", "vector_stores/{}/files/{}", self._vs_file_get),
                ("DELETE", "vector_stores/{}/files/{}", self._vs_file_delete),
                ("POST", "vector_stores/{}/file_batches", self._vs_batch_create),
                ("GET", "vector_stores/{}/file_batches/{}", self._vs_batch_get),
                ("POST", "vector_stores/{}/file_batches/{}/cancel", self._vs_batch_get),
                (
                    "GET",
                    "vector_stores/{}/file_batches/{}/files",
                    lambda q, b, c, v, _i: self._vs_files(q, b, c, v),
                ),
                ("POST", "conversations", self._conv_create),
                ("GET", "conversations/{}", lambda q, b, c, i: self._get(self.conversations, i)),
                ("POST", "conversations/{}", lambda q, b, c, i: self._update(self.conversations, i, b)),
                (
                    "DELETE",
                    "conversations/{}",
                    lambda q, b, c, i: self._delete(self.conversations, i, "conversation.deleted"),
                ),
                ("GET", "conversations/{}/items", self._conv_items),
                ("POST", "conversations/{}/items", self._conv_add_items),
                ("GET", "conversations/{}/items/{}", self._conv_item),
                ("DELETE", "conversations/{}/items/{}", self._conv_item_delete),
                ("GET", "responses/{}", lambda q, b, c, i: self._get(self.responses, i)),
                ("DELETE", "responses/{}", lambda q, b, c, i: self._delete(self.responses, i, "response")),
                ("POST", "responses/{}/cancel", self._response_cancel),
                ("GET", "responses/{}/input_items", self._input_items),
                ("GET", "chat/completions", self._chat_list),
                ("GET", "chat/completions/{}", lambda q, b, c, i: self._get(self.chats, i)),
                ("POST", "chat/completions/{}", lambda q, b, c, i: self._update(self.chats, i, b)),
                (
                    "DELETE",
                    "chat/completions/{}",
                    lambda q, b, c, i: self._delete(self.chats, i, "chat.completion.deleted"),
                ),
                ("GET", "chat/completions/{}/messages", self._chat_messages),
            )
        ]

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: str, body: bytes, content_type: str) -> Result | None:
        """The answer to a stored-object request, or None when the path is not one of these."""
        for m, pattern, fn in self._routes:
            if m != method:
                continue
            found = pattern.fullmatch(path)
            if found is not None:
                params = dict(p.partition("=")[::2] for p in query.split("&") if p)
                with self.lock:
                    return fn(params, body, content_type, *found.groups())
        return None

    def keep_response(self, request: Json, answer: Json) -> None:
        """A created response is stored (unless ``store`` is false), with its input as items."""
        if request.get("store") is False:
            return
        with self.lock:
            self.responses.items[answer["id"]] = answer
            given = request.get("input")
            items = given if isinstance(given, list) else [{"role": "user", "content": given}]
            self.items[answer["id"]] = [
                {"id": new_id("msg_"), "type": "message", "status": "completed", **i}
                for i in items
                if isinstance(i, dict)
            ]
            conversation = request.get("conversation")
            conv_id = conversation.get("id") if isinstance(conversation, dict) else conversation
            if isinstance(conv_id, str) and conv_id in self.conversations.items:
                self.items.setdefault(conv_id, []).extend([*self.items[answer["id"]], *answer["output"]])

    def keep_chat(self, request: Json, answer: Json) -> None:
        """A chat completion is stored when the request says ``store: true``."""
        if request.get("store") is not True:
            return
        with self.lock:
            answer = {**answer, "metadata": request.get("metadata") or {}}
            self.chats.items[answer["id"]] = answer
            self.messages[answer["id"]] = [
                {"id": f"{answer['id']}-{n}", **m}
                for n, m in enumerate(request.get("messages") or [])
                if isinstance(m, dict)
            ]

    # -- common ---------------------------------------------------------------------------------

    @staticmethod
    def _missing(what: str = "object") -> Result:
        return 404, {
            "error": {
                "message": f"No such {what}.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }

    def _get(self, kind: Kind, object_id: str) -> Result:
        found = kind.items.get(object_id)
        return (200, found) if found is not None else self._missing()

    def _update(self, kind: Kind, object_id: str, body: bytes) -> Result:
        found = kind.items.get(object_id)
        if found is None:
            return self._missing()
        changes = orjson.loads(body or b"{}")
        for name in ("metadata", "name", "expires_after"):
            if name in changes:
                found[name] = changes[name]
        return 200, found

    def _delete(self, kind: Kind, object_id: str, deleted: str) -> Result:
        if kind.items.pop(object_id, None) is None:
            return self._missing()
        self.contents.pop(object_id, None)
        return 200, {"id": object_id, "object": deleted, "deleted": True}

    # -- files and uploads ----------------------------------------------------------------------

    @staticmethod
    def _form(
        body: bytes, content_type: str, raw: str, names: tuple[str, ...]
    ) -> tuple[dict[str, str], bytes]:
        scanner = FieldScanner(boundary_of(content_type), names, len(body), raw, _BODY_LIMIT)
        scanner.feed(body)
        fields = scanner.close()
        return fields, scanner.raw_value or b""

    def _new_file(self, data: bytes, purpose: str, filename: str = "upload") -> Json:
        file: Json = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.files.items[file["id"]] = file
        self.contents[file["id"]] = data
        return file

    def _file_create(self, q: dict[str, str], body: bytes, ctype: str) -> Result:
        try:
            fields, data = self._form(body, ctype, "file", ("purpose",))
        except FormError as exc:
            return 400, {
                "error": {
                    "message": exc.message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        return 200, self._new_file(data, fields.get("purpose", "user_data"))

    def _file_content(self, q: dict[str, str], body: bytes, ctype: str, file_id: str) -> Result:
        if file_id not in self.files.items:
            return self._missing("file")
        return 200, self.contents.get(file_id, b"")

    def _upload_create(self, q: dict[str, str], body: bytes, ctype: str) -> Result:
        data = orjson.loads(body)
        upload: Json = {
            "id": new_id("upload_"),
            "object": "upload",
            "bytes": data.get("bytes", 0),
            "created_at": int(time.time()),
            "expires_at": int(time.time()) + 3600,
            "filename": data.get("filename", "upload"),
            "purpose": data.get("purpose", "user_data"),
            "status": "pending",
            "file": None,
        }
        self.uploads.items[upload["id"]] = upload
        self.parts[upload["id"]] = []
        return 200, upload

    def _upload_part(self, q: dict[str, str], body: bytes, ctype: str, upload_id: str) -> Result:
        if upload_id not in self.uploads.items:
            return self._missing("upload")
        _, data = self._form(body, ctype, "data", ())
        part_id = new_id("part_")
        self.parts[upload_id].append((part_id, data))
        return 200, {
            "id": part_id,
            "object": "upload.part",
            "created_at": int(time.time()),
            "upload_id": upload_id,
        }

    def _upload_complete(self, q: dict[str, str], body: bytes, ctype: str, upload_id: str) -> Result:
        upload = self.uploads.items.get(upload_id)
        if upload is None:
            return self._missing("upload")
        order = orjson.loads(body).get("part_ids") or []
        parts = dict(self.parts.get(upload_id, []))
        data = b"".join(parts.get(p, b"") for p in order)
        upload.update(status="completed", file=self._new_file(data, upload["purpose"], upload["filename"]))
        return 200, upload

    def _upload_cancel(self, q: dict[str, str], body: bytes, ctype: str, upload_id: str) -> Result:
        upload = self.uploads.items.get(upload_id)
        if upload is None:
            return self._missing("upload")
        upload["status"] = "cancelled"
        return 200, upload

    # -- batches --------------------------------------------------------------------------------

    def _batch_create(self, q: dict[str, str], body: bytes, ctype: str) -> Result:
        data = orjson.loads(body)
        source = self.contents.get(str(data.get("input_file_id")))
        if source is None:
            return self._missing("file")
        out = []
        for line in source.splitlines():
            if not line.strip():
                continue
            entry = orjson.loads(line)
            build = {"/v1/embeddings": embeddings, "/v1/responses": response}.get(
                entry.get("url"), chat_completion
            )
            answer = build(entry.get("body") or {})
            out.append(
                {
                    "id": new_id("batch_req_"),
                    "custom_id": entry.get("custom_id"),
                    "response": {"status_code": 200, "request_id": new_id("req_"), "body": answer},
                    "error": None,
                }
            )
        output = self._new_file(
            b"".join(orjson.dumps(o) + b"\n" for o in out), "batch_output", "output.jsonl"
        )
        now = int(time.time())
        batch: Json = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": data.get("endpoint"),
            "errors": None,
            "input_file_id": data.get("input_file_id"),
            "completion_window": data.get("completion_window", "24h"),
            "status": "completed",
            "output_file_id": output["id"],
            "error_file_id": None,
            "created_at": now,
            "completed_at": now,
            "request_counts": {"total": len(out), "completed": len(out), "failed": 0},
            "metadata": data.get("metadata"),
        }
        self.batches.items[batch["id"]] = batch
        return 200, batch

    def _batch_cancel(self, q: dict[str, str], body: bytes, ctype: str, batch_id: str) -> Result:
        batch = self.batches.items.get(batch_id)
        if batch is None:
            return self._missing("batch")
        batch["status"] = "cancelled"
        return 200, batch
