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
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

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
    """US dollars per million tokens."""

    input: float
    cached_input: float
    output: float

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        if cached > prompt:  # (not min(): this runs for every metered request)
            cached = prompt
        return (
            (prompt - cached) * self.input + cached * self.cached_input + completion * self.output
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class GlobalLimits:
    rps: int | None = None
    max_concurrent: int | None = None
    queue: int = 0  # requests allowed to wait for a slot; 0 = answer 503 at once
    queue_timeout: float = 1.0  # longest wait in the queue before a 503


@dataclass(frozen=True, slots=True)
class LimitSettings:
    defaults: Mapping[str, Any] = field(default_factory=dict)
    global_: GlobalLimits = field(default_factory=GlobalLimits)
    default_max_output_tokens: int = 4096
    soft_threshold: float = 0.8
    webhook_url: str | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    default_price: Price | None = None

    def price_for(self, model: str | None) -> Price | None:
        """Exact name, else the longest priced name the model starts with (dated snapshots)."""
        if model is None:
            return self.default_price
        found = self.prices.get(model)
        if found is not None:
            return found
        best = ""
        for name in self.prices:
            if len(name) > len(best) and model.startswith(name + "-"):
                best = name
        return self.prices[best] if best else self.default_price


def shipped_prices() -> dict[str, Price]:
    raw = json.loads(resources.files("keygate").joinpath("data/prices.json").read_text())
    return {k: _price(v, f"prices.{k}") for k, v in raw.items() if not k.startswith("_")}


def _number(value: object, where: str, *, integer: bool = False, allow_zero: bool = False) -> Any:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer and not isinstance(value, int):
        ok = False
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: expected {kind} > 0, got {value!r}")
    return value


def _price(raw: object, where: str) -> Price:
    if not isinstance(raw, dict) or set(raw) - {"input", "cached_input", "output"} or "input" not in raw:
        raise ConfigError(f"{where}: expected {{input, cached_input, output}} in US$ per million tokens")
    inp = float(_number(raw["input"], f"{where}.input", allow_zero=True))
    return Price(
        inp,
        float(_number(raw.get("cached_input", inp), f"{where}.cached_input", allow_zero=True)),
        float(_number(raw.get("output", 0), f"{where}.output", allow_zero=True)),
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
    amount = _number(amount, f"{where}.amount")
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
            out[name] = _number(value, f"{where}.{name}", integer=True)
        elif name in BUDGET_KINDS:
            out[name] = parse_budget(value, f"{where}.{name}", name)
    return out


def parse_limits(raw: object) -> LimitSettings:
    """Parse the ``limits:`` section of the config file."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("limits: expected a mapping")
    known = {"defaults", "global", "default_max_output_tokens", "soft_threshold", "webhook_url"}
    unknown = set(raw) - known - {"prices", "default_price"}
    if unknown:
        raise ConfigError(f"limits.{sorted(unknown)[0]}: unknown setting")
    defaults = raw.get("defaults", {}) or {}
    if not isinstance(defaults, dict) or set(defaults) - POLICY_KEYS:
        bad = sorted(set(defaults) - POLICY_KEYS)[0] if isinstance(defaults, dict) else ""
        raise ConfigError(f"limits.defaults{'.' + bad if bad else ''}: unknown limit")
    g = raw.get("global", {}) or {}
    if not isinstance(g, dict) or set(g) - {"rps", "max_concurrent", "queue", "queue_timeout"}:
        raise ConfigError("limits.global: expected {rps, max_concurrent, queue, queue_timeout}")
    glob = GlobalLimits(
        rps=_number(g["rps"], "limits.global.rps", integer=True) if "rps" in g else None,
        max_concurrent=(
            _number(g["max_concurrent"], "limits.global.max_concurrent", integer=True)
            if "max_concurrent" in g
            else None
        ),
        queue=_number(g.get("queue", 0), "limits.global.queue", integer=True, allow_zero=True),
        queue_timeout=float(_number(g.get("queue_timeout", 1.0), "limits.global.queue_timeout")),
    )
    soft = float(_number(raw.get("soft_threshold", 0.8), "limits.soft_threshold"))
    if soft > 1:
        raise ConfigError("limits.soft_threshold: expected a fraction such as 0.8")
    webhook = raw.get("webhook_url")
    if webhook is not None:
        parts = urlsplit(str(webhook))
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ConfigError("limits.webhook_url: expected an http(s) URL without credentials")
    prices = shipped_prices()
    extra = raw.get("prices", {}) or {}
    if not isinstance(extra, dict):
        raise ConfigError("limits.prices: expected a map from model to {input, cached_input, output}")
    prices.update({str(k): _price(v, f"limits.prices.{k}") for k, v in extra.items()})
    default_price = raw.get("default_price")
    return LimitSettings(
        defaults=check_policy(defaults, "limits.defaults"),
        global_=glob,
        default_max_output_tokens=_number(
            raw.get("default_max_output_tokens", 4096), "limits.default_max_output_tokens", integer=True
        ),
        soft_threshold=soft,
        webhook_url=str(webhook) if webhook is not None else None,
        prices=prices,
        default_price=_price(default_price, "limits.default_price") if default_price is not None else None,
    )
