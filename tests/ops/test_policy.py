"""``keygate.ops.policy.validate_policy``: the one check of key and team policy JSON, every field,
before anything reaches the store or a guard."""

from __future__ import annotations

import math
from typing import Any

import pytest

from keygate.errors import InvalidRequest
from keygate.ops.policy import validate_policy
from keygate.routes import ROUTE_NAMES

MAX = 2**53 - 1
INTEGER_FIELDS = [
    "max_body_bytes",
    "max_output_tokens",
    "rotate_every",
    "rps",
    "rpm",
    "rph",
    "rpd",
    "tpm",
    "max_concurrent",
]


def refused(policy: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        validate_policy(policy)
    assert info.value.param == "policy" and info.value.status == 400
    return info.value.message


def test_a_full_policy_is_kept_and_copied() -> None:
    policy = {
        "models": ["gpt-4o", "gpt-4o-mini*"],
        "routes": sorted(ROUTE_NAMES),
        "allow_ips": ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"],
        "expires_at": "2030-01-01T00:00:00Z",
        "max_body_bytes": 1024,
        "max_output_tokens": 256,
        "honeytoken": False,
        "rotate_every": 86400,
        "rotated_at": "2029-06-01T12:00:00Z",
        "rps": 1, "rpm": 60, "rph": 600, "rpd": 6000, "tpm": 10000, "max_concurrent": 4,
        "budget_usd": {"amount": 12.5, "period": "month"},
        "budget_tokens": {"amount": 1000000, "period": "day"},
    }  # fmt: skip
    checked = validate_policy(policy)
    assert checked == policy and checked is not policy
    checked["models"].append("mutated")
    assert policy["models"] == ["gpt-4o", "gpt-4o-mini*"]  # lists are copied too
    assert validate_policy({}) == {}


@pytest.mark.parametrize("bad", [None, [], "rpm=1", 5, [("rpm", 1)]])
def test_a_policy_is_an_object(bad: Any) -> None:
    assert refused(bad) == "policy must be a JSON object"


@pytest.mark.parametrize("name", ["unheard_of", "Models", "rpm ", "budget", "key_hash", "x" * 500])
def test_unknown_fields_are_refused_by_name(name: str) -> None:
    message = refused({"rpm": 5, name: 1})
    assert message == f"policy.{name[:80]}: unknown policy field"


@pytest.mark.parametrize("name", INTEGER_FIELDS)
@pytest.mark.parametrize(
    "bad",
    [0, -1, MAX + 1, 2**64, 2**90, 1.5, 1.0, math.nan, math.inf, -math.inf, True, False, "10", None, [1]],
)
def test_counts_are_whole_numbers_from_1_to_2_53(name: str, bad: Any) -> None:
    assert refused({name: bad}).startswith(
        f"policy.{name}: expected a whole number > 0 and at most 9,007,199,254,740,991"
    )


@pytest.mark.parametrize("name", INTEGER_FIELDS)
def test_count_bounds_that_are_accepted(name: str) -> None:
    assert validate_policy({name: 1}) == {name: 1}
    assert validate_policy({name: MAX}) == {name: MAX}


@pytest.mark.parametrize("name", ["models", "routes", "allow_ips"])
@pytest.mark.parametrize("bad", ["gpt-4o", None, {"a": 1}, [1], ["ok", None], [["nested"]], ["x"] * 257])
def test_lists_are_lists_of_at_most_256_strings(name: str, bad: Any) -> None:
    assert refused({name: bad}) == f"policy.{name}: expected a list of at most 256 strings"


def test_list_items_are_checked() -> None:
    assert validate_policy({"models": ["anything*", ""]})["models"] == ["anything*", ""]  # globs, any text
    assert validate_policy({"models": ["m"] * 256})["models"] == ["m"] * 256
    assert refused({"routes": ["chat.completions", "admin"]}) == "policy.routes: 'admin' is not valid"
    assert refused({"allow_ips": ["10.0.0.0/33"]}) == "policy.allow_ips: '10.0.0.0/33' is not valid"
    assert refused({"allow_ips": ["x" * 200]}) == f"policy.allow_ips: {'x' * 80!r} is not valid"
    assert validate_policy({"allow_ips": ["10.1.2.3/8"]}) == {"allow_ips": ["10.1.2.3/8"]}  # kept as given


@pytest.mark.parametrize("name", ["expires_at", "rotated_at"])
@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2030-01-01T00:00:00Z", "2030-01-01T00:00:00Z"),
        ("2030-01-01T00:00:00z", "2030-01-01T00:00:00Z"),
        ("2030-01-01T02:30:00+02:30", "2030-01-01T00:00:00Z"),
        ("2030-01-01T00:00:00", "2030-01-01T00:00:00Z"),  # no offset: UTC
        ("2030-01-01", "2030-01-01T00:00:00Z"),
        (" 2030-01-01T00:00:00.75Z ", "2030-01-01T00:00:00Z"),
        (1893456000, "2030-01-01T00:00:00Z"),
        (1893456000.9, "2030-01-01T00:00:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        (253402300799, "9999-12-31T23:59:59Z"),
    ],
)
def test_times_are_stored_in_one_iso_form(name: str, given: Any, stored: str) -> None:
    assert validate_policy({name: given}) == {name: stored}


@pytest.mark.parametrize("name", ["expires_at", "rotated_at"])
@pytest.mark.parametrize(
    "bad", ["someday", "", "2030-13-01", "1969-12-31T23:59:59Z", -1, 253402300800, math.nan, math.inf, True, None,
            ["2030-01-01"], "2" * 65],
)  # fmt: skip
def test_bad_times_are_refused(name: str, bad: Any) -> None:
    assert refused({name: bad}).startswith(f"policy.{name}: expected an ISO 8601 time")


def test_honeytoken_is_a_boolean() -> None:
    assert validate_policy({"honeytoken": True}) == {"honeytoken": True}
    for bad in (1, 0, "true", None):
        assert refused({"honeytoken": bad}) == "policy.honeytoken: expected true or false"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("50/month", {"amount": 50.0, "period": "month"}),
        ("$7.25 / week", {"amount": 7.25, "period": "week"}),
        ("3", {"amount": 3.0, "period": "lifetime"}),
        (10, {"amount": 10, "period": "lifetime"}),
        ({"amount": 1e15, "period": "day"}, {"amount": 1e15, "period": "day"}),
        ({"amount": 2}, {"amount": 2, "period": "lifetime"}),
    ],
)
def test_dollar_budgets(given: Any, stored: dict[str, Any]) -> None:
    assert validate_policy({"budget_usd": given}) == {"budget_usd": stored}


def test_token_budgets_are_whole() -> None:
    assert validate_policy({"budget_tokens": "1000/day"}) == {
        "budget_tokens": {"amount": 1000, "period": "day"}
    }
    assert isinstance(validate_policy({"budget_tokens": 5.0})["budget_tokens"]["amount"], int)
    assert (
        refused({"budget_tokens": "1.5/day"})
        == "policy.budget_tokens.amount: a token budget is a whole number"
    )


@pytest.mark.parametrize("name", ["budget_usd", "budget_tokens"])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("lots", "expected AMOUNT/PERIOD such as 50/month"),
        ("-5/day", "expected AMOUNT/PERIOD"),
        ({"amount": 5, "period": "fortnight"}, ".period: expected one of day, week, month, lifetime"),
        ("5/fortnight", ".period: expected one of"),
        ({"amount": 0, "period": "day"}, ".amount: expected a number > 0"),
        ({"amount": 1e16}, ".amount: expected a number > 0 and at most"),
        ({"amount": math.nan}, ".amount: expected a number"),
        ({"amount": math.inf}, ".amount: expected a number"),
        ({"amount": "5"}, ".amount: expected a number"),
        ({"amount": True}, ".amount: expected a number"),
        ({"period": "day"}, ".amount: expected a number"),
        (None, ".amount: expected a number"),
    ],
)
def test_bad_budgets_are_refused_by_field(name: str, bad: Any, message: str) -> None:
    assert refused({name: bad}).startswith(f"policy.{name}")
    assert message in refused({name: bad})


def test_share_objects_is_key_or_team() -> None:
    assert validate_policy({"share_objects": "team"}) == {"share_objects": "team"}
    assert validate_policy({"share_objects": "key"}) == {"share_objects": "key"}
    for bad in ("everyone", True, None, ["team"]):
        assert "policy.share_objects: expected one of key, team" in refused({"share_objects": bad})
