"""Reading a secret from the operator: stdin or a no-echo prompt, never argv."""

from __future__ import annotations

import getpass
import sys

from ..errors import InvalidRequest
from ..types import Secret


def read_secret(from_stdin: bool, what: str = "upstream API key") -> Secret:
    """The secret from stdin (``--key-stdin``) or from a no-echo prompt on a terminal."""
    if from_stdin:
        value = sys.stdin.readline().strip()
    elif sys.stdin.isatty():
        value = getpass.getpass(f"{what} (input hidden): ").strip()
    else:
        raise InvalidRequest(f"pass the {what} on stdin with --key-stdin (never as an argument)")
    if not value:
        raise InvalidRequest(f"no {what} given")
    if any(c.isspace() for c in value) or len(value) > 4096:
        raise InvalidRequest(f"the {what} must be one line without spaces")
    return Secret(value)
