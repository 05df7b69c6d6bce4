"""Where a request body names stored objects, and of which kind.

The Responses, Chat Completions, Batches, Vector Stores and Conversations APIs name stored
objects in their bodies: ``previous_response_id``; ``conversation`` (an id, or ``{"id": ...}``);
``file_id`` in content parts (``input_file`` in Responses and Conversations, ``{"type": "file",
"file": {"file_id": ...}}`` in Chat Completions) and in a vector store file attach; ``file_ids``
(vector stores and their file batches); ``input_file_id`` (a batch); ``vector_store_ids`` (a
``file_search`` tool). Each is found wherever it is in the body (no recursion: depth costs no
stack), and only when the body's bytes hold one of those names as a JSON key, so a chat request
that names none pays two dict lookups and one byte search.
"""

from __future__ import annotations

from typing import Any, Final

MARK: Final = b"_id"  # every name below holds it (file_id, file_ids, input_file_id, vector_store_ids)
_NONE: Final[list[tuple[str, str, str]]] = []  # (returned, never changed)
# Body field -> the kind of object it names (a list of ids for the plural names).
_SINGLE: Final = {"file_id": "file", "input_file_id": "file"}
_PLURAL: Final = {"file_ids": "file", "vector_store_ids": "vector_store"}

Reference = tuple[str, str, str]
"""``(param, kind, id)``: the body field that names the object, its kind, its id."""


def references(body: bytes, data: dict[str, Any]) -> list[Reference]:
    """Every stored object ``data`` (the parsed ``body``) names; [] when it names none."""
    previous = data.get("previous_response_id")
    conversation = data.get("conversation")
    if previous is None and conversation is None and MARK not in body:
        return _NONE  # (the usual request: two dict lookups and one byte search)
    found: list[Reference] = []
    if type(previous) is str:
        found.append(("previous_response_id", "response", previous))
    if type(conversation) is dict:
        conversation = conversation.get("id")
    if type(conversation) is str:
        found.append(("conversation", "conversation", conversation))
    if MARK not in body:
        return found
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            for key, value in item.items():
                tv = type(value)
                if tv is str:
                    single = _SINGLE.get(key)
                    if single is not None:
                        found.append((key, single, value))
                elif tv is list:
                    plural = _PLURAL.get(key)
                    if plural is not None:
                        found.extend((key, plural, v) for v in value if type(v) is str)
                    stack.extend(v for v in value if type(v) is dict or type(v) is list)
                elif tv is dict:
                    stack.append(value)
        elif type(item) is list:
            stack.extend(v for v in item if type(v) is dict or type(v) is list)
    return found
