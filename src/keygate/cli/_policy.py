"""Policy flags shared by ``keys create/update`` and ``teams create/update``.

Each feature that keeps per-key or per-team rules (access policy, limits, budgets...) provides a
:class:`PolicyOptions` and appends it to :data:`GROUPS`; the key and team commands then accept
its flags and store what it returns in the record's ``policy`` JSON.
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol


class PolicyOptions(Protocol):
    title: str

    def add_arguments(self, group: argparse._ArgumentGroup, *, update: bool) -> None:
        """Add this feature's flags. ``update`` is True for ``... update`` commands."""

    def apply(self, args: argparse.Namespace, policy: dict[str, Any]) -> None:
        """Change ``policy`` in place from parsed flags (only the flags that were given)."""


GROUPS: list[PolicyOptions] = []


def add_policy_arguments(parser: argparse.ArgumentParser, *, update: bool) -> None:
    for options in GROUPS:
        options.add_arguments(parser.add_argument_group(options.title), update=update)


def apply_policy(args: argparse.Namespace, policy: dict[str, Any]) -> dict[str, Any]:
    out = dict(policy)
    for options in GROUPS:
        options.apply(args, out)
    return out


def describe(policy: dict[str, Any]) -> str:
    """A compact one-line summary of a policy for tables."""
    if not policy:
        return "-"
    return " ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(policy.items())
    )
