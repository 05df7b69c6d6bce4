"""Access-policy flags for ``keys create/update`` and ``teams create/update``.

Stored in the record's ``policy`` JSON under the fields :mod:`keygate.guards.policy` reads.
On ``update``, a flag replaces that field; ``--clear FIELD`` removes one.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import time
from datetime import UTC, datetime
from typing import Any

from ..errors import InvalidRequest
from ..routes import ROUTE_NAMES

FIELDS = ("models", "routes", "expires_at", "allow_ips", "max_body_bytes", "max_output_tokens")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    m = _DURATION.match(text.strip())
    if m is None:
        raise InvalidRequest(f"--expires-in: expected a duration such as 30d, 12h or 90m, got {text!r}")
    return int(m.group(1)) * _UNIT[m.group(2)]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> str:
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"--expires-at: expected an ISO 8601 time such as 2027-01-31T00:00:00Z, got {text!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return iso(dt.timestamp())


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise InvalidRequest(f"--allow-ip: {text!r} is not an IP address or CIDR network") from None


def _route(text: str) -> str:
    if text not in ROUTE_NAMES:
        raise InvalidRequest(
            f"--allow-route: unknown route {text!r}; one of {', '.join(sorted(ROUTE_NAMES))}"
        )
    return text


def _positive(flag: str, value: int) -> int:
    if value <= 0:
        raise InvalidRequest(f"{flag}: expected a positive number")
    return value


class AccessPolicyOptions:
    title = "access policy"

    def add_arguments(self, group: argparse._ArgumentGroup, *, update: bool) -> None:
        group.add_argument(
            "--allow-model",
            action="append",
            metavar="MODEL",
            help="allowed model, exact or glob such as 'gpt-4o*' (repeatable)",
        )
        group.add_argument(
            "--allow-route",
            action="append",
            metavar="ROUTE",
            help=f"allowed route (repeatable): {', '.join(sorted(ROUTE_NAMES))}",
        )
        expiry = group.add_mutually_exclusive_group()
        expiry.add_argument("--expires-in", metavar="DURATION", help="expire after e.g. 30d, 12h, 90m")
        expiry.add_argument("--expires-at", metavar="TIME", help="expire at e.g. 2027-01-31T00:00:00Z")
        group.add_argument(
            "--allow-ip",
            action="append",
            metavar="CIDR",
            help="allowed client network, IPv4 or IPv6 (repeatable)",
        )
        group.add_argument("--max-body-bytes", type=int, metavar="N", help="largest request body")
        group.add_argument(
            "--max-output-tokens",
            type=int,
            metavar="N",
            help="clamp max_tokens / max_completion_tokens / max_output_tokens to N",
        )
        if update:
            group.add_argument(
                "--clear",
                action="append",
                choices=FIELDS,
                metavar="FIELD",
                help=f"remove a policy field (repeatable): {', '.join(FIELDS)}",
            )

    def apply(self, args: argparse.Namespace, policy: dict[str, Any]) -> None:
        for name in getattr(args, "clear", None) or ():
            policy.pop(name, None)
        if args.allow_model:
            policy["models"] = sorted({m.strip() for m in args.allow_model if m.strip()})
        if args.allow_route:
            policy["routes"] = sorted({_route(r) for r in args.allow_route})
        if args.expires_in:
            policy["expires_at"] = iso(time.time() + parse_duration(args.expires_in))
        if args.expires_at:
            policy["expires_at"] = parse_time(args.expires_at)
        if args.allow_ip:
            policy["allow_ips"] = sorted({_cidr(c) for c in args.allow_ip})
        if args.max_body_bytes is not None:
            policy["max_body_bytes"] = _positive("--max-body-bytes", args.max_body_bytes)
        if args.max_output_tokens is not None:
            policy["max_output_tokens"] = _positive("--max-output-tokens", args.max_output_tokens)


OPTIONS = AccessPolicyOptions()
