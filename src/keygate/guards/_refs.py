"""Where a request body names stored objects, and of which kind.

The Responses, Chat Completions, Batches, Vector Stores and Conversations APIs name stored
objects in their bodies: ``previous_response_id``; ``conversation`` (an id, or ``{"id": ...}``);
``file_id`` in content parts (``input_file`` in Responses and Conversations, ``{"type": "file",
"file": {"file_id": ...}}`` in Chat Completions) and in a vector store file attach; ``file_ids``
(vector stores and their file batches); ``input_file_id`` (a batch); ``vector_store_ids`` (a
``file_search`` tool). Each is found wherever it is in the body (no recursion: depth costs no
stack), and only when the body's bytes hold one of those names as a JSON key, so a chat request
that names none pays two byte searches.
"""

from __future__ import annotations

from typing import Any, Final

_MARKS: Final = (b'_id"', b'_ids"')  # every name below ends so (JSON keys are quoted)
# Body field -> the kind of object it names (a list of ids for the plural names).
_SINGLE: Final = {"file_id": "file", "input_file_id": "file"}
_PLURAL: Final = {"file_ids": "file", "vector_store_ids": "vector_store"}
_TOP: Final = {"previous_response_id": "response"}

Reference = tuple[str, str, str]
"""``(param, kind, id)``: the body field that names the object, its kind, its id."""


def references(body: bytes, data: dict[str, Any]) -> list[Reference]:
    """Every stored object ``data`` (the parsed ``body``) names; [] when it names none."""
    found: list[Reference] = []
    for name, kind in _TOP.items():
        value = data.get(name)
        if type(value) is str:
            found.append((name, kind, value))
    conversation = data.get("conversation")
    if type(conversation) is dict:
        conversation = conversation.get("id")
    if type(conversation) is str:
        found.append(("conversation", "conversation", conversation))
    if _MARKS[0] not in body and _MARKS[1] not in body:
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
