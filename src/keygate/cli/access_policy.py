"""Access-policy flags for ``keys create/update`` and ``teams create/update``.

Stored in the record's ``policy`` JSON under the fields :mod:`keygate.guards.policy` reads.
On ``update``, a flag replaces that field; ``--clear FIELD`` removes one.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from typing import Any

from ..access_config import SCAN_MODES
from ..errors import InvalidRequest
from ..routes import ROUTE_NAMES
from ..times import iso, parse_duration, parse_instant

FIELDS = (
    "models",
    "routes",
    "expires_at",
    "allow_ips",
    "max_body_bytes",
    "max_output_tokens",
    "prompt_scan",
    "share_objects",
)


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
        group.add_argument(
            "--prompt-secrets",
            choices=SCAN_MODES,
            help="secrets in request bodies (API keys, private keys, tokens): block, mask, log or off "
            "(default: the gateway's prompt_scan.secrets setting, block unless configured)",
        )
        group.add_argument(
            "--prompt-pii",
            choices=SCAN_MODES,
            help="personal data in request bodies (card numbers, IBANs, email addresses, phone numbers): "
            "block, mask, log or off (default: the gateway's prompt_scan.pii setting, off unless configured)",
        )
        group.add_argument(
            "--share-objects",
            choices=("key", "team"),
            help="who sees the stored objects (files, batches, responses...) a key creates: the key "
            "alone (the default) or every key of its team",
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
            policy["expires_at"] = iso(time.time() + parse_duration(args.expires_in, "--expires-in"))
        if args.expires_at:
            policy["expires_at"] = iso(parse_instant(args.expires_at.strip(), "--expires-at"))
        if args.allow_ip:
            policy["allow_ips"] = sorted({_cidr(c) for c in args.allow_ip})
        # Numbers are range-checked with every other policy field (ops.policy.validate_policy).
        if args.max_body_bytes is not None:
            policy["max_body_bytes"] = args.max_body_bytes
        if args.max_output_tokens is not None:
            policy["max_output_tokens"] = args.max_output_tokens
        if args.share_objects:
            policy["share_objects"] = args.share_objects
        scan = {"secrets": args.prompt_secrets, "pii": args.prompt_pii}
        if any(scan.values()):
            # each flag replaces its own part of the field; the other part is kept
            policy["prompt_scan"] = {**policy.get("prompt_scan", {}), **{k: v for k, v in scan.items() if v}}


OPTIONS = AccessPolicyOptions()
