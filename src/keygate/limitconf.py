"""The ``limits:`` config section, per-key/team limit policies, and the model price table.

Policy (in a key's or team's ``policy`` JSON, or ``limits.defaults`` in the config)::

    rps / rpm / rph / rpd: int        requests per second / minute / hour / day
    tpm: int                          tokens (prompt + completion) per minute
    max_concurrent: int               requests in flight (a stream counts until it ends)
    budget_usd:    {amount: float, period: day|week|month|lifetime}
    budget_tokens: {amount: int,   period: day|week|month|lifetime}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from . import schema
from .errors import ConfigError
from .schema import positive, setting

RATE_PERIODS: dict[str, tuple[float, str]] = {
    "rps": (1.0, "requests"),
    "rpm": (60.0, "requests"),
    "rph": (3600.0, "requests"),
    "rpd": (86400.0, "requests"),
    "tpm": (60.0, "tokens"),
}
BUDGET_KINDS = ("budget_usd", "budget_tokens")
BUDGET_PERIODS = ("day", "week", "month", "lifetime")
POLICY_KEYS = frozenset({*RATE_PERIODS, "max_concurrent", *BUDGET_KINDS})
_BUDGET_TEXT = re.compile(r"^\s*\$?([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*([a-z]+))?\s*$")


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens; ``image_tokens``: the most input tokens one image can cost on
    this model (0: ``limits.image_input_tokens``)."""

    input: float
    cached_input: float
    output: float
    image_tokens: int = 0

    def scaled(self, factor: float) -> Price:
        """This price times ``factor`` (a service tier's multiplier)."""
        return Price(self.input * factor, self.cached_input * factor, self.output * factor, self.image_tokens)

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        if cached > prompt:  # (not min(): this runs for every metered request)
            cached = prompt
        return (
            (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        ) / 1_000_000


def _count(value: object, where: str) -> int:
    found: int = schema.number(value, where, integer=True)
    return found


@dataclass(frozen=True, slots=True)
class GlobalLimits:
    rps: int | None = setting(None, _count)
    max_concurrent: int | None = setting(None, _count)
    # requests allowed to wait for a slot; 0 = answer 503 at once
    queue: int = setting(0, positive(integer=True, zero=True))
    queue_timeout: float = setting(1.0, positive())  # longest wait in the queue before a 503


def _fraction(value: object, where: str) -> float:
    found = float(schema.number(value, where))
    if found > 1:
        raise ConfigError(f"{where}: expected a fraction such as 0.8")
    return found


def _defaults(value: object, where: str) -> dict[str, Any]:
    raw = schema.mapping(value, where)
    unknown = sorted(set(raw) - POLICY_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown limit")
    return check_policy(raw, where)


def _prices(value: object, where: str) -> dict[str, Price]:
    raw = schema.mapping(value, where)
    prices = shipped_prices()
    prices.update({str(k): _price(v, f"{where}.{k}") for k, v in raw.items()})
    return prices


# OpenAI's service tiers and their price relative to the standard ("default") tier: flex is half
# price; priority costs 1.7x to 2x depending on the model (2 is the most). A request without
# service_tier is "auto", which runs on the project's configured tier (standard unless changed).
SERVICE_TIERS: dict[str, float] = {"auto": 1.0, "default": 1.0, "flex": 0.5, "priority": 2.0}

# A dated snapshot of a priced model: -YYYY-MM-DD (gpt-4o-2024-08-06) or -MMDD (gpt-4-0613).
_MONTH, _DAY = r"(?:0[1-9]|1[0-2])", r"(?:0[1-9]|[12][0-9]|3[01])"
_DATED = re.compile(rf"^(.+)-(?:20[0-9][0-9]-{_MONTH}-{_DAY}|{_MONTH}{_DAY})\Z")


def snapshot_base(model: str) -> str | None:
    """The model a dated snapshot name is a snapshot of (``gpt-4o-2024-08-06``: ``gpt-4o``), else None."""
    dated = _DATED.match(model)
    return dated.group(1) if dated is not None else None


def _tiers(value: object, where: str) -> dict[str, float]:
    raw = schema.mapping(value, where)
    tiers = dict(SERVICE_TIERS)
    tiers.update({str(k): float(schema.number(v, f"{where}.{k}")) for k, v in raw.items()})
    return tiers


def _tokens_or_none(value: object, where: str) -> int | None:
    return None if value is None else _count(value, where)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    defaults: Mapping[str, Any] = setting(dict, _defaults)
    global_: GlobalLimits = setting(GlobalLimits, lambda v, w: schema.build(GlobalLimits, v, w), key="global")
    default_max_output_tokens: int = setting(4096, _count)
    soft_threshold: float = setting(0.8, _fraction)
    webhook_url: str | None = setting(None, schema.url)
    # the shipped table, plus those of `prices:` (a default of its own, also without `limits:`)
    prices: Mapping[str, Price] = setting(lambda: shipped_prices(), _prices)
    default_price: Price | None = setting(None, lambda v, w: _price(v, w))
    # Service tier -> price multiplier under a dollar budget; a tier not listed is refused there.
    service_tiers: Mapping[str, float] = setting(lambda: dict(SERVICE_TIERS), _tiers)
    # The worst case of one image input (image_url / input_image part), in input tokens, for models
    # whose price gives none: OpenAI's high-detail maximum is 1,445 on gpt-4o (85 + 8 tiles x 170)
    # and up to 3,779 on the patch-priced models (1,536 patches x 2.46 on the nano models).
    image_input_tokens: int = setting(3800, _count)
    # The worst case of one file input (input_file / file part: a PDF is billed as its text plus
    # an image per page, so it has no bound keygate can see); None: refused under a budget or tpm.
    file_input_tokens: int | None = setting(None, _tokens_or_none)

    def price_for(self, model: str | None) -> Price | None:
        """The model's own price, or that of the model a dated snapshot name is a snapshot of
        (``gpt-4o-2024-08-06``: ``gpt-4o``); never that of a base name for a variant (``o1-pro``,
        ``gpt-4o-mini`` are not ``o1``, ``gpt-4o``). Else ``default_price``."""
        if model is None:
            return self.default_price
        found = self.prices.get(model)
        if found is not None:
            return found
        dated = _DATED.match(model)
        if dated is not None:
            found = self.prices.get(dated.group(1))
            if found is not None:
                return found
        return self.default_price

    def image_tokens(self, model: str | None) -> int:
        """The most input tokens one image can cost on ``model``."""
        price = self.price_for(model)
        return price.image_tokens if price is not None and price.image_tokens else self.image_input_tokens


def shipped_prices() -> dict[str, Price]:
    raw = json.loads(resources.files("keygate").joinpath("data/prices.json").read_text())
    return {k: _price(v, f"prices.{k}") for k, v in raw.items() if not k.startswith("_")}


def _price(raw: object, where: str) -> Price:
    fields = {"input", "cached_input", "output", "image_tokens"}
    if not isinstance(raw, dict) or set(raw) - fields or "input" not in raw:
        raise ConfigError(
            f"{where}: expected {{input, cached_input, output}} in US$ per million tokens"
            " (and optionally image_tokens)"
        )
    inp = float(schema.number(raw["input"], f"{where}.input", zero=True))
    return Price(
        inp,
        float(schema.number(raw.get("cached_input", inp), f"{where}.cached_input", zero=True)),
        float(schema.number(raw.get("output", 0), f"{where}.output", zero=True)),
        int(schema.number(raw.get("image_tokens", 0), f"{where}.image_tokens", integer=True, zero=True)),
    )


def parse_budget(value: object, where: str, kind: str) -> dict[str, Any]:
    """``50/month``, ``{amount: 50, period: month}`` or a bare number (lifetime) -> policy dict."""
    if isinstance(value, dict):
        amount, period = value.get("amount"), value.get("period", "lifetime")
    elif isinstance(value, str):
        m = _BUDGET_TEXT.match(value)
        if m is None:
            raise ConfigError(f"{where}: expected AMOUNT/PERIOD such as 50/month, got {value!r}")
        amount, period = float(m.group(1)), m.group(2) or "lifetime"
    else:
        amount, period = value, "lifetime"
    amount = schema.number(amount, f"{where}.amount")
    if period not in BUDGET_PERIODS:
        raise ConfigError(f"{where}.period: expected one of {', '.join(BUDGET_PERIODS)}, got {period!r}")
    if kind == "budget_tokens":
        if float(amount) != int(amount):
            raise ConfigError(f"{where}.amount: a token budget is a whole number")
        amount = int(amount)
    return {"amount": amount, "period": period}


def check_policy(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate limit entries of a policy (other entries are left to their own features)."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in RATE_PERIODS or name == "max_concurrent":
            out[name] = schema.number(value, f"{where}.{name}", integer=True)
        elif name in BUDGET_KINDS:
            out[name] = parse_budget(value, f"{where}.{name}", name)
    return out


def parse_limits(raw: object) -> LimitSettings:
    """Parse the ``limits:`` section of the config file."""
    return schema.build(LimitSettings, raw, "limits")
