"""keygate.times: the one duration grammar and the one reading of instants."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from keygate.errors import InvalidRequest
from keygate.times import expired, fmt_time, instant, iso, parse_duration, parse_instant

LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("1.5h", 5400),
        ("1.5d", 129600),
        ("30d", 2592000),
        ("2w", 1209600),
        ("0", 0),
        ("0s", 0),
        (" 15 m ", 900),
        ("0.5", 0.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--grace") == seconds


@pytest.mark.parametrize(
    "text", ["", " ", "-5", "5x", "5mm", "1.2.3", "m", "1e3", ".5h", "5 m s", "1,5h", "P1D", "15M", "inf"]
)
def test_bad_durations_name_the_flag(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_duration(text, "--expires-in")
    assert info.value.message.startswith("--expires-in: expected a duration such as 90s, 15m")
    assert info.value.status == 400


def test_a_duration_beyond_the_last_instant_is_too_long() -> None:
    assert parse_duration("10000w", "--rotate-every") == 10000 * 604800
    with pytest.raises(InvalidRequest, match=r"^--rotate-every: '9999999999w' is too long$"):
        parse_duration("9999999999w", "--rotate-every")
    long_text = "9" * 100
    with pytest.raises(InvalidRequest) as info:
        parse_duration(long_text, "--within")
    assert long_text not in info.value.message and "9" * 40 in info.value.message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2027-01-31T00:00:00Z", 1801353600.0),
        ("2027-01-31T00:00:00z", 1801353600.0),
        ("2027-01-31T00:00:00+00:00", 1801353600.0),
        ("2027-01-31T02:00:00+02:00", 1801353600.0),
        ("2027-01-31T00:00:00", 1801353600.0),  # no offset: UTC
        ("2027-01-31", 1801353600.0),
        (" 2027-01-31T00:00:00Z ", 1801353600.0),
        (1801353600, 1801353600.0),
        (1801353600.5, 1801353600.5),
        (0, 0.0),
        (LATEST, LATEST),
    ],
)
def test_instants(value: object, seconds: float) -> None:
    assert parse_instant(value, "--expires-at") == seconds
    assert instant(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        math.nan,
        math.inf,
        -1,
        LATEST + 1,
        "1969-12-31T23:59:59Z",
        "tomorrow",
        "",
        "2027-13-01T00:00:00Z",
        "2027-01-31T00:00:00Z" + " " * 60,  # longer than any time
        None,
        ["2027-01-31"],
        {"at": 1},
    ],
)
def test_what_is_not_an_instant(value: object) -> None:
    assert instant(value) is None
    with pytest.raises(InvalidRequest) as info:
        parse_instant(value, "expires_at")
    assert info.value.message.startswith("expires_at: expected an ISO 8601 time")


def test_expired_fails_closed() -> None:
    when = 1801353600.0
    assert expired(when, when - 1) is False
    assert expired(when, when) is True
    assert expired("2027-01-31T00:00:00Z", when + 1) is True
    assert expired("2027-01-31T00:00:00Z", when - 1) is False
    # A stored value keygate cannot read counts as passed: refused, never let through.
    for unreadable in (None, "garbage", True, math.nan, [when], -5):
        assert expired(unreadable, 0.0) is True


def test_iso_and_fmt_time() -> None:
    assert iso(1801353600.0) == "2027-01-31T00:00:00Z"
    assert iso(1801353600.999) == "2027-01-31T00:00:00Z"  # to the second
    assert parse_instant(iso(1801353601.0), "x") == 1801353601.0  # round trip
    assert fmt_time(None) == "-" and fmt_time(0) == "1970-01-01T00:00:00Z"
