"""keygate.schema: the checks every setting and operator input goes through, and build()."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keygate import schema
from keygate.errors import ConfigError
from keygate.schema import MAX_AMOUNT, MAX_COUNT, setting
from keygate.types import Secret

# --- number ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kw"),
    [
        (1, {}),
        (0.5, {}),
        (MAX_AMOUNT, {}),
        (0, {"zero": True}),
        (0.0, {"zero": True}),
        (7, {"integer": True}),
        (MAX_COUNT, {"integer": True}),
        (10, {"integer": True, "maximum": 10}),
    ],
)
def test_number_accepts(value: Any, kw: dict[str, Any]) -> None:
    found = schema.number(value, "x", **kw)
    assert found == value and type(found) is type(value)


@pytest.mark.parametrize(
    ("value", "kw"),
    [
        (0, {}),
        (-1, {}),
        (-0.5, {"zero": True}),
        (True, {}),
        (False, {"zero": True}),
        (math.nan, {}),
        (math.inf, {}),
        (-math.inf, {"zero": True}),
        ("5", {}),
        (None, {}),
        ([1], {}),
        (1.5, {"integer": True}),
        (2.0, {"integer": True}),
        (MAX_COUNT + 1, {"integer": True}),
        (MAX_AMOUNT * 10, {}),
        (11, {"integer": True, "maximum": 10}),
        (10.5, {"maximum": 10}),
    ],
)
def test_number_refuses(value: Any, kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        schema.number(value, "limits.rpm", **kw)
    assert info.value.message.startswith("limits.rpm: expected ")


def test_number_messages() -> None:
    with pytest.raises(ConfigError) as info:
        schema.number(True, "a.b", integer=True)
    assert (
        info.value.message == "a.b: expected a whole number > 0 and at most 9,007,199,254,740,991, got True"
    )
    with pytest.raises(ConfigError) as info:
        schema.number(-1, "w", zero=True, maximum=10)
    assert info.value.message == "w: expected a number >= 0 and at most 10, got -1"
    with pytest.raises(ConfigError) as info:
        schema.number("x" * 100, "w")
    assert info.value.message.endswith("got '" + "x" * 36 + "...")  # long values are cut short


def test_positive_keeps_integers_and_makes_floats() -> None:
    assert schema.positive()(3, "w") == 3.0 and isinstance(schema.positive()(3, "w"), float)
    assert schema.positive(integer=True)(3, "w") == 3
    assert schema.positive(zero=True)(0, "w") == 0.0
    with pytest.raises(ConfigError):
        schema.positive(maximum=5)(6, "w")


# --- url ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("https://h", "https://h"),
        ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1"),
        ("http://127.5.6.7/v1", "http://127.5.6.7/v1"),
        ("http://[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("http://localhost:8080/v1", "http://localhost:8080/v1"),
        ("http://LOCALHOST/v1", "http://LOCALHOST/v1"),
    ],
)
def test_url_accepts(value: str, expected: str) -> None:
    assert schema.url(value, "u") == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://127.evil.com/v1", "https is required"),  # a name starting with 127 is not loopback
        ("http://localhost.evil.com/v1", "https is required"),
        ("http://127.0.0.1.nip.io/v1", "https is required"),
        ("http://10.0.0.1/v1", "https is required"),
        ("http://[::ffff:10.0.0.1]/v1", "https is required"),
        ("ftp://h/v1", "expected an http(s) URL"),
        ("https:///v1", "expected an http(s) URL"),
        ("api.openai.com/v1", "expected an http(s) URL"),
        ("https://user:pw@h/v1", "no credentials, query or fragment"),
        ("https://h/v1?x=1", "no credentials, query or fragment"),
        ("https://h/v1#f", "no credentials, query or fragment"),
    ],
)
def test_url_refuses(value: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        schema.url(value, "upstreams.x.base_url")
    assert info.value.message.startswith("upstreams.x.base_url: ") and why in info.value.message


def test_url_insecure_ok_and_types() -> None:
    assert schema.url("http://10.0.0.1/v1", "u", insecure_ok=True) == "http://10.0.0.1/v1"
    with pytest.raises(ConfigError, match=r"^u: expected a URL$"):
        schema.url(5, "u")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("127.evil.com", False),
        ("localhost.evil.com", False),
        ("0.0.0.0", False),  # noqa: S104
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert schema.is_loopback(host) is loopback


# --- secret references ----------------------------------------------------------------------------


def test_secret_ref_reads_environment_references() -> None:
    env = {"OPENAI_API_KEY": "sk-env", "EMPTY": ""}
    found = schema.secret_ref(" ${OPENAI_API_KEY} ", "w", env)
    assert isinstance(found, Secret) and found.reveal() == "sk-env"
    assert schema.secret_ref("${UNSET}", "w", env) is None
    assert schema.secret_ref("${EMPTY}", "w", env) is None


@pytest.mark.parametrize(
    "literal", ["sk-proj-abcdef0123456789", "$OPENAI_API_KEY", "${1BAD}", "${A B}", "", "prefix${K}"]
)
def test_secret_ref_refuses_literals(literal: str) -> None:
    with pytest.raises(ConfigError) as info:
        schema.secret_ref(literal, "upstreams.openai.api_key", {"K": "v", "OPENAI_API_KEY": "v"})
    message = info.value.message
    assert message.startswith("upstreams.openai.api_key: literal secrets are not allowed")
    assert "${OPENAI_API_KEY} (or file:/path)" in message
    if literal:
        assert literal not in message.split(":", 1)[1].replace("${OPENAI_API_KEY}", "")


def test_secret_ref_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("  sk-from-file \n")
    found = schema.secret_ref(f"file:{secret}", "w", {})
    assert found is not None and found.reveal() == "sk-from-file"
    assert schema.secret_ref(f"file:{tmp_path / 'missing'}", "w", {}) is None
    (tmp_path / "empty").write_text("\n")
    assert schema.secret_ref(f"file:{tmp_path / 'empty'}", "w", {}) is None
    with pytest.raises(ConfigError, match="file: references need an absolute path"):
        schema.secret_ref("file:relative/secret", "w", {})
    with pytest.raises(ConfigError, match=r"^w: cannot read"):
        schema.secret_ref(f"file:{tmp_path}", "w", {})  # a directory
    # Where files are not allowed, a file: reference is just another literal.
    with pytest.raises(ConfigError) as info:
        schema.secret_ref(f"file:{secret}", "w", {}, files=False)
    assert "literal secrets" in info.value.message and "file:/path" not in info.value.message
    with pytest.raises(ConfigError, match=r"^w: expected a reference such as \$\{OPENAI_API_KEY\}$"):
        schema.secret_ref(42, "w", {})


# --- small checks ---------------------------------------------------------------------------------


def test_small_checks() -> None:
    assert schema.networks(None, "w") == ()
    assert [str(n) for n in schema.networks(["10.1.2.3/8", "::1"], "w")] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ConfigError, match=r"^w: 'nope' is not an IP address or CIDR network$"):
        schema.networks(["nope"], "w")
    with pytest.raises(ConfigError, match=r"^w: expected a list of CIDR networks$"):
        schema.networks("10.0.0.0/8", "w")
    assert schema.mapping(None, "w") == {} and schema.mapping({"a": 1}, "w") == {"a": 1}
    with pytest.raises(ConfigError, match=r"^w: expected a mapping$"):
        schema.mapping([], "w")
    assert schema.choice("a", "b")("b", "w") == "b"
    with pytest.raises(ConfigError, match=r"^w: expected one of a, b, got 'c'$"):
        schema.choice("a", "b")("c", "w")
    assert schema.text("t", "w") == "t" and schema.optional_text(None, "w") is None
    for bad in ("", 5, None):
        with pytest.raises(ConfigError, match=r"^w: expected a non-empty string$"):
            schema.text(bad, "w")
    assert schema.flag(False, "w") is False
    with pytest.raises(ConfigError, match=r"^w: expected true or false$"):
        schema.flag("false", "w")
    with pytest.raises(AssertionError, match="parsed by the caller"):
        schema.caller(1, "w")


# --- build ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    size: int = setting(1, schema.positive(integer=True))


@dataclass(frozen=True)
class Section:
    name: str = setting("default", schema.text, env="TEST_SECTION_NAME")
    rate: float = setting(1.0, schema.positive())
    global_: str = setting("g", schema.text, key="global")
    tags: tuple[str, ...] = setting(tuple, lambda v, w: tuple(v))
    inner: Inner = setting(Inner, lambda v, w: schema.build(Inner, v, w))
    parsed: int = setting(0, schema.caller)
    not_a_setting: str = "plain"


def test_build_defaults_values_and_given() -> None:
    s = schema.build(Section, None, "sec", parsed=5)
    assert (s.name, s.rate, s.global_, s.tags, s.inner, s.parsed, s.not_a_setting) == (
        "default",
        1.0,
        "g",
        (),
        Inner(1),
        5,
        "plain",
    )
    s = schema.build(Section, {"name": "n", "rate": 2, "global": "x", "inner": {"size": 3}}, "sec", parsed=0)
    assert (s.name, s.rate, s.global_, s.inner.size) == ("n", 2.0, "x", 3)


def test_build_refuses_unknown_names_with_their_path() -> None:
    with pytest.raises(ConfigError) as info:
        schema.build(Section, {"zzz": 1, "bogus": 2, "name": "n"}, "sec", parsed=0)
    assert info.value.message == "sec.bogus: unknown setting"  # the first, sorted
    with pytest.raises(ConfigError) as info:
        schema.build(Section, {"global_": "x"}, "sec", parsed=0)  # the YAML name is "global"
    assert info.value.message == "sec.global_: unknown setting"
    with pytest.raises(ConfigError) as info:
        schema.build(Section, {"inner": {"sizee": 3}}, "sec", parsed=0)
    assert info.value.message == "sec.inner.sizee: unknown setting"
    with pytest.raises(ConfigError) as info:
        schema.build(Section, {"oops": 1}, "", parsed=0)
    assert info.value.message == "oops: unknown setting"  # at the root, no leading dot
    with pytest.raises(ConfigError) as info:
        schema.build(Section, {"rate": 0}, "sec", parsed=0)
    assert info.value.message.startswith("sec.rate: expected a number > 0")


def test_build_environment_overrides() -> None:
    s = schema.build(Section, {"name": "file"}, "sec", {"TEST_SECTION_NAME": "env"}, parsed=0)
    assert s.name == "env"
    assert schema.build(Section, {"name": "file"}, "sec", {"TEST_SECTION_NAME": ""}, parsed=0).name == "file"
    assert schema.build(Section, {"name": "file"}, "sec", None, parsed=0).name == "file"
    with pytest.raises(ConfigError) as info:
        schema.build(Section, {}, "sec", {"TEST_SECTION_NAME": 5}, parsed=0)  # type: ignore[dict-item]
    assert info.value.message == "TEST_SECTION_NAME: expected a non-empty string"
