"""Rate-limit and budget flags for ``keys create/update`` and ``teams create/update``."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError, InvalidRequest
from ..limitconf import RATE_PERIODS, parse_budget

_RATE_HELP = {
    "rps": "requests per second",
    "rpm": "requests per minute",
    "rph": "requests per hour",
    "rpd": "requests per day",
    "tpm": "tokens (prompt + completion) per minute",
}


class LimitOptions:
    title = "rate limits and budgets"

    def add_arguments(self, group: argparse._ArgumentGroup, *, update: bool) -> None:
        off = " (0 removes it)" if update else ""
        for name, text in _RATE_HELP.items():
            group.add_argument(f"--{name}", type=int, metavar="N", help=text + off)
        group.add_argument("--max-concurrent", type=int, metavar="N", help="requests in flight" + off)
        none = " ('none' removes it)" if update else ""
        usd_help = "US$ budget, e.g. 50/month (day|week|month|lifetime)" + none
        group.add_argument("--budget-usd", metavar="AMOUNT/PERIOD", help=usd_help)
        tokens_help = "token budget, e.g. 1000000/day" + none
        group.add_argument("--budget-tokens", metavar="AMOUNT/PERIOD", help=tokens_help)

    def apply(self, args: argparse.Namespace, policy: dict[str, Any]) -> None:
        for name in (*RATE_PERIODS, "max_concurrent"):
            value = getattr(args, name, None)
            if value is None:
                continue
            if value < 0:
                raise InvalidRequest(f"--{name.replace('_', '-')} must be a positive number")
            if value == 0:
                policy.pop(name, None)
            else:
                policy[name] = value
        for name in ("budget_usd", "budget_tokens"):
            value = getattr(args, name, None)
            if value is None:
                continue
            if value.strip().lower() in ("", "none", "0"):
                policy.pop(name, None)
                continue
            try:
                policy[name] = parse_budget(value, "--" + name.replace("_", "-"), name)
            except ConfigError as exc:
                raise InvalidRequest(exc.message) from None
