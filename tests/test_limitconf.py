"""The ``limits:`` config section, limit entries of key and team policies, and the price table."""

from __future__ import annotations

from typing import Any

import pytest

from keygate.errors import ConfigError
from keygate.limitconf import Price, check_policy, parse_budget, parse_limits, shipped_prices

# -- budgets -------------------------------------------------------------------------------------


def test_budget_syntax() -> None:
    assert parse_budget("50/month", "x", "budget_usd") == {"amount": 50.0, "period": "month"}
    assert parse_budget("1000000/day", "x", "budget_tokens") == {"amount": 1000000, "period": "day"}
    with pytest.raises(ConfigError, match="period"):
        parse_budget("5/fortnight", "x", "budget_usd")


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("1000/week", "budget_tokens", {"amount": 1000, "period": "week"}),
        ({"amount": 2.5, "period": "week"}, "budget_usd", {"amount": 2.5, "period": "week"}),
        ("$12.50 / day", "budget_usd", {"amount": 12.5, "period": "day"}),
        ("7", "budget_usd", {"amount": 7.0, "period": "lifetime"}),  # no period: lifetime
        (20, "budget_usd", {"amount": 20, "period": "lifetime"}),  # a bare number too
        ({"amount": 300}, "budget_tokens", {"amount": 300, "period": "lifetime"}),
        (300.0, "budget_tokens", {"amount": 300, "period": "lifetime"}),  # a whole float is fine
    ],
)
def test_budget_forms(value: Any, kind: str, expected: dict[str, Any]) -> None:
    found = parse_budget(value, "limits.defaults.budget", kind)
    assert found == expected and type(found["amount"]) is type(expected["amount"])


@pytest.mark.parametrize(
    ("value", "kind", "needle"),
    [
        ("fifty/month", "budget_usd", r"where: expected AMOUNT/PERIOD such as 50/month, got 'fifty/month'"),
        ("5/year", "budget_usd", r"where\.period: expected one of day, week, month, lifetime"),
        ({"amount": 5, "period": "hourly"}, "budget_usd", r"where\.period"),
        ("0/day", "budget_usd", r"where\.amount: expected a number > 0"),
        (-3, "budget_usd", r"where\.amount"),
        (True, "budget_usd", r"where\.amount"),
        ({"period": "day"}, "budget_usd", r"where\.amount"),
        ("2.5/day", "budget_tokens", r"where\.amount: a token budget is a whole number"),
    ],
)
def test_bad_budgets_name_the_field(value: Any, kind: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_budget(value, "where", kind)


def test_check_policy_validates_limit_entries_and_leaves_the_others() -> None:
    policy = {"rpm": 5, "max_concurrent": 2, "budget_usd": "3/day", "models": ["gpt-4o"], "honeytoken": True}
    assert check_policy(policy, "p") == {
        "rpm": 5,
        "max_concurrent": 2,
        "budget_usd": {"amount": 3.0, "period": "day"},
    }
    for name, value in [("rpm", 1.5), ("tpm", 0), ("max_concurrent", -1), ("rps", "10")]:
        with pytest.raises(ConfigError, match=rf"p\.{name}: expected a whole number"):
            check_policy({name: value}, "p")


# -- the limits section --------------------------------------------------------------------------


def test_limits_config_and_prices() -> None:
    limits = parse_limits({"defaults": {"rpm": 60}, "prices": {"my-model": {"input": 1, "output": 2}}})
    assert limits.defaults == {"rpm": 60}
    assert limits.price_for("gpt-4o-2024-08-06") == limits.prices["gpt-4o"]
    assert limits.price_for("gpt-4o-mini-2024-07-18") == limits.prices["gpt-4o-mini"]
    assert limits.price_for("my-model") is not None and limits.price_for("unknown") is None
    with pytest.raises(ConfigError, match=r"limits\.defaults\.rpx"):
        parse_limits({"defaults": {"rpx": 1}})
    with pytest.raises(ConfigError, match=r"limits\.global\.rps"):
        parse_limits({"global": {"rps": -1}})
    with pytest.raises(ConfigError, match="webhook_url"):
        parse_limits({"webhook_url": "ftp://x"})


def test_defaults_of_an_empty_section() -> None:
    limits = parse_limits({})
    assert limits.defaults == {} and limits.default_max_output_tokens == 4096
    assert limits.soft_threshold == 0.8 and limits.webhook_url is None and limits.default_price is None
    g = limits.global_
    assert (g.rps, g.max_concurrent, g.queue, g.queue_timeout) == (None, None, 0, 1.0)
    assert limits.prices == shipped_prices() and "gpt-4o-mini" in limits.prices
    assert parse_limits(None) == limits  # a `limits:` key with nothing under it


def test_week_budget_syntax_and_defaults() -> None:
    limits = parse_limits(
        {"defaults": {"budget_usd": "20/week"}, "default_price": {"input": 5, "output": 15}}
    )
    assert limits.defaults["budget_usd"] == {"amount": 20.0, "period": "week"}
    # default_price is the fallback for unknown models only; priced models keep their own price.
    unknown = limits.price_for("mystery-model")
    assert unknown is not None and (unknown.input, unknown.output) == (5.0, 15.0)
    assert unknown.cached_input == 5.0  # cached input defaults to the input price
    assert limits.price_for(None) is unknown  # a request without a model: the default price too
    known = limits.price_for("text-embedding-3-small")
    assert known is not None and known.input == 0.02
    assert parse_limits({}).price_for("mystery-model") is None
    assert parse_limits({}).price_for(None) is None


def test_configured_prices_extend_and_override_the_shipped_table() -> None:
    shipped = shipped_prices()
    limits = parse_limits({"prices": {"gpt-4o": {"input": 1}, "house-model": {"input": 2, "output": 3}}})
    assert limits.prices["gpt-4o"] == Price(1.0, 1.0, 0.0)  # cached_input = input, output = 0
    assert limits.prices["house-model"] == Price(2.0, 2.0, 3.0)
    assert limits.prices["o3"] == shipped["o3"]  # the rest of the shipped table stays
    assert limits.price_for("gpt-4o-2024-11-20") == Price(1.0, 1.0, 0.0)


def test_price_lookup_takes_exact_names_and_dated_snapshots_only() -> None:
    limits = parse_limits({})
    assert limits.price_for("gpt-4-turbo-2024-04-09") == limits.prices["gpt-4-turbo"]
    assert limits.price_for("gpt-4-0613") == limits.prices["gpt-4"]  # -MMDD
    assert limits.price_for("gpt-4o-mini-2024-07-18") == limits.prices["gpt-4o-mini"]
    assert limits.price_for("gpt-4o") == limits.prices["gpt-4o"]
    # a variant is never priced as its base: o1-pro costs ten times o1
    assert limits.price_for("o1-pro") == limits.prices["o1-pro"] != limits.prices["o1"]
    for variant in (
        "o1-pro-2025-03-19x",
        "gpt-4o-mini-search-preview",
        "gpt-4o-realtime-preview",
        "o3-deep-research",
        "gpt-4-0125-preview",
        "gpt-4o-2024",  # not a date
        "gpt-4o-20240806",
        "gpt-4oz",
        "my-gpt-4o",
        "ft:gpt-4o-mini:org::abc",
    ):
        assert limits.price_for(variant) is None, variant
    fallback = parse_limits({"default_price": {"input": 9}})
    assert fallback.price_for("o3-deep-research") == Price(9.0, 9.0, 0.0)


def test_service_tiers_and_media_worst_cases_are_configurable() -> None:
    limits = parse_limits({})
    assert limits.service_tiers == {"auto": 1.0, "default": 1.0, "flex": 0.5, "priority": 2.0}
    assert (limits.image_input_tokens, limits.file_input_tokens) == (3800, None)
    assert limits.image_tokens("gpt-4o") == 3800 and limits.image_tokens("gpt-4o-mini-2024-07-18") == 48169
    mine = parse_limits(
        {
            "service_tiers": {"scale": 1.0, "priority": 1.75},
            "image_input_tokens": 2000,
            "file_input_tokens": 50000,
            "prices": {"house": {"input": 1, "output": 1, "image_tokens": 99}},
        }
    )
    assert mine.service_tiers["scale"] == 1.0 and mine.service_tiers["priority"] == 1.75
    assert mine.service_tiers["flex"] == 0.5
    assert (mine.image_tokens("gpt-4o"), mine.image_tokens("house"), mine.file_input_tokens) == (
        2000,
        99,
        50000,
    )
    assert Price(1.0, 0.5, 2.0, 7).scaled(0.5) == Price(0.5, 0.25, 1.0, 7)
    with pytest.raises(ConfigError, match=r"service_tiers\.flex"):
        parse_limits({"service_tiers": {"flex": -1}})
    with pytest.raises(ConfigError, match="image_tokens"):
        parse_limits({"prices": {"x": {"input": 1, "image_tokens": 1.5}}})


def test_shipped_prices_skip_comment_entries_and_are_well_formed() -> None:
    prices = shipped_prices()
    assert prices and not any(name.startswith("_") for name in prices)
    for price in prices.values():
        assert price.input >= 0 and price.cached_input >= 0 and price.output >= 0


def test_price_cost_in_dollars_per_million_tokens() -> None:
    price = Price(input=2.0, cached_input=0.5, output=8.0)
    assert price.cost(1_000_000, 0, 0) == 2.0
    assert price.cost(1000, 400, 500) == pytest.approx((600 * 2.0 + 400 * 0.5 + 500 * 8.0) / 1e6)
    # More cached tokens than prompt tokens (a malformed usage report): at most the prompt is cached.
    assert price.cost(100, 250, 0) == pytest.approx(100 * 0.5 / 1e6)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"prices": {"m": 5}}, r"limits\.prices\.m: expected \{input, cached_input, output\}"),
        ({"prices": {"m": {"output": 1}}}, r"limits\.prices\.m: expected"),
        ({"prices": {"m": {"input": 1, "extra": 2}}}, r"limits\.prices\.m: expected"),
        ({"prices": {"m": {"input": -1}}}, r"limits\.prices\.m\.input"),
        ({"prices": {"m": {"input": 1, "output": "x"}}}, r"limits\.prices\.m\.output"),
        ({"prices": ["m"]}, r"limits\.prices"),
        ({"default_price": {"input": 1, "cached_input": -2}}, r"limits\.default_price\.cached_input"),
        ({"soft_threshold": 1.5}, r"limits\.soft_threshold: expected a fraction such as 0\.8"),
        ({"soft_threshold": 0}, r"limits\.soft_threshold"),
        ({"default_max_output_tokens": 0}, r"limits\.default_max_output_tokens"),
        ({"default_max_output_tokens": 10.5}, r"limits\.default_max_output_tokens"),
        ({"defaults": {"budget_tokens": "1.5/day"}}, r"limits\.defaults\.budget_tokens\.amount"),
        ({"defaults": {"rpm": 0}}, r"limits\.defaults\.rpm"),
        ({"defaults": ["rpm"]}, r"limits\.defaults"),
        ({"global": {"max_concurrent": 0}}, r"limits\.global\.max_concurrent"),
        ({"global": {"queue": -1}}, r"limits\.global\.queue"),
        ({"global": {"queue_timeout": 0}}, r"limits\.global\.queue_timeout"),
        ({"global": {"burst": 3}}, r"limits\.global\.burst"),
        ({"rpm": 10}, r"limits\.rpm"),  # a limit belongs under defaults
    ],
)
def test_bad_limits_name_the_field(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_limits(raw)


def test_a_soft_threshold_of_one_and_valid_global_caps_are_accepted() -> None:
    limits = parse_limits(
        {
            "soft_threshold": 1,
            "webhook_url": "https://hooks.example/budget",
            "global": {"rps": 50, "max_concurrent": 8, "queue": 0, "queue_timeout": 0.5},
        }
    )
    assert limits.soft_threshold == 1.0 and limits.webhook_url == "https://hooks.example/budget"
    assert (limits.global_.rps, limits.global_.max_concurrent, limits.global_.queue) == (50, 8, 0)
    assert limits.global_.queue_timeout == 0.5
