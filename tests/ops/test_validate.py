"""``keygate.ops.validate``: operator input checks shared by CLI flags and admin-API JSON."""

from __future__ import annotations

from typing import Any

import pytest

from keygate.errors import InvalidRequest
from keygate.ops import upstreams
from keygate.ops.policy import validate_policy
from keygate.ops.validate import NAME_MAX, check_name, check_object, check_ref, has_control

from .conftest import Ops

CONTROL = [
    "\x00",
    "\x07",
    "\t",
    "\n",
    "\r",
    "\x1b",
    "\x1f",
    "\x7f",
    "\x80",
    "\x85",
    "\x9b",
    "\x9f",
    "\u2028",
    "\u2029",
]


@pytest.mark.parametrize("char", CONTROL)
def test_names_with_control_characters_are_refused(char: str) -> None:
    for name in (f"a{char}b", char, f"{char}name", f"name{char}"):
        with pytest.raises(InvalidRequest) as info:
            check_name(name)
        assert info.value.param == "name" and "control characters" in info.value.message
    with pytest.raises(InvalidRequest) as other:
        check_name(f"x{char}", "label")
    assert other.value.param == "label"
    with pytest.raises(InvalidRequest):
        check_ref(f"team{char}", "team")


@pytest.mark.parametrize(
    "name", ["a", "billing-app", " spaced ", "naïve café ☕", "名前", "x" * NAME_MAX, "\u00a0a"]
)
def test_ordinary_names_are_kept_as_given(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("bad", ["", " ", "\u3000", "x" * (NAME_MAX + 1), None, 5, ["a"], {"a": 1}, True])
def test_blank_long_or_non_text_names_are_refused(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match=f"at most {NAME_MAX} characters"):
        check_name(bad)


def test_check_object() -> None:
    assert check_object({"a": 1}, {"a", "b"}, {"a"}) == {"a": 1}
    for body in (None, [], "x", 1):
        with pytest.raises(InvalidRequest, match="must be a JSON object") as info:
            check_object(body, {"a"})
        assert info.value.param is None
    with pytest.raises(InvalidRequest, match="unknown field 'c'") as unknown:
        check_object({"a": 1, "d": 2, "c": 3}, {"a"})
    assert unknown.value.param == "c"  # the first, sorted: the same message every time
    with pytest.raises(InvalidRequest) as long_name:
        check_object({"z" * 500: 1}, {"a"})
    assert long_name.value.param == "z" * 80
    with pytest.raises(InvalidRequest, match="missing field 'b'") as missing:
        check_object({"a": 1}, {"a", "b", "c"}, {"b", "c"})
    assert missing.value.param == "b"


def test_check_ref() -> None:
    assert check_ref(None, "team") is None and check_ref("", "team") is None
    assert check_ref("team_1", "team") == "team_1" and check_ref("x" * NAME_MAX, "team") == "x" * NAME_MAX
    for bad in (5, ["a"], "x" * (NAME_MAX + 1), False):
        with pytest.raises(InvalidRequest) as info:
            check_ref(bad, "upstream")
        assert info.value.param == "upstream"


@pytest.mark.parametrize("char", CONTROL)
def test_policy_list_entries_with_control_characters_are_refused(char: str) -> None:
    assert has_control(f"gpt{char}4o") and not has_control("gpt-4o \u00e9\u202f")
    for name in ("models", "routes", "allow_ips"):
        with pytest.raises(InvalidRequest) as info:
            validate_policy({name: [f"x{char}"]})
        assert info.value.param == "policy" and f"policy.{name}: entries" in info.value.message
    with pytest.raises(InvalidRequest, match="at most 200 characters"):
        validate_policy({"models": ["m" * (NAME_MAX + 1)]})
    assert validate_policy({"models": ["m" * NAME_MAX, "gpt-4o*"]})["models"] == ["m" * NAME_MAX, "gpt-4o*"]


@pytest.mark.parametrize("char", ["\n", "\x1b", "\x9b", "\u2028"])
def test_a_new_upstream_name_with_control_characters_is_refused(ops: Ops, char: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        upstreams.define(
            ops.settings, ops.store, ops.actor, f"beta{char}", base_url="https://beta.example/v1"
        )
    assert info.value.param == "upstream" and "control characters" in info.value.message
    assert ops.store.list_upstream_defs() == [] and ops.audit("upstreams.define") == []
