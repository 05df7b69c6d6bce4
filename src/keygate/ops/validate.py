"""Checks of operator input, the same for CLI flags and admin-API JSON.

Everything is checked before anything is written; each refusal is an
:class:`~keygate.errors.InvalidRequest` naming the field (``param``), which the CLI prints and the
admin API answers as a 400 in OpenAI's error shape.
"""

from __future__ import annotations

import re
from collections.abc import Set
from typing import Any, Final

from ..errors import InvalidRequest

NAME_MAX: Final = 200
# Control characters (C0, DEL, C1) and line or paragraph separators: a name holding one could
# forge rows in `keys list` or hide text on a terminal.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_object(body: Any, allowed: Set[str], required: Set[str] = frozenset()) -> dict[str, Any]:
    """``body`` as a JSON object with only ``allowed`` fields and every ``required`` one."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        name = sorted(map(str, unknown))[0][:80]
        raise InvalidRequest(f"unknown field {name!r}", param=name)
    missing = required - set(body)
    if missing:
        name = sorted(missing)[0]
        raise InvalidRequest(f"missing field {name!r}", param=name)
    return body


def check_name(value: Any, field: str = "name") -> str:
    """A display name: non-blank text of at most :data:`NAME_MAX` characters, no control characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > NAME_MAX or _CONTROL.search(value):
        raise InvalidRequest(
            f"{field} must be non-blank text of at most {NAME_MAX} characters, without control characters",
            param=field,
        )
    return value


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character :func:`check_name` refuses (for other operator text)."""
    return _CONTROL.search(text) is not None


def check_ref(value: Any, field: str) -> str | None:
    """An optional reference to a team or upstream (id or name); ``None`` or ``""`` means none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > NAME_MAX or _CONTROL.search(value):
        raise InvalidRequest(
            f"{field} must be an id or a name (at most {NAME_MAX} characters, without control characters)",
            param=field,
        )
    return value
