"""The CLI against a remote admin API (``--admin-url URL``, token from ``KEYGATE_ADMIN_TOKEN``).

The client follows keygate's outbound policy (``outbound.py``): no redirects (a redirect must never
carry the token to another host), no proxy from the environment, TLS verified; and plain http is
refused except to a loopback address. Errors come back
in OpenAI's error shape and are re-raised as the same keygate error, so the CLI prints the same
message and exit code in both modes.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from .. import outbound, schema
from ..config import admin_token_from_env
from ..errors import (
    AuthenticationFailed,
    ConfigError,
    Conflict,
    InvalidRequest,
    KeygateError,
    NotFound,
    PermissionDenied,
)

_BY_STATUS: dict[int, type[KeygateError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
}


def is_remote(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "admin_url", None))


def segment(value: str) -> str:
    """A path segment, percent-encoded so an id can never change the path it is sent to."""
    return quote(value, safe="")


class AdminClient:
    def __init__(self, url: str, env: Mapping[str, str]) -> None:
        token = admin_token_from_env(env)
        if token is None:
            raise ConfigError("KEYGATE_ADMIN_TOKEN: required with --admin-url (an admin token, kga_...)")
        self._client = outbound.sync_client(
            schema.url(url, "--admin-url"), {"authorization": f"Bearer {token.reveal()}"}
        )

    def request(self, method: str, path: str, json: Any = None, params: dict[str, str] | None = None) -> Any:
        try:
            with self._client as client:
                response = client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise KeygateError(f"cannot reach the admin API: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise _error(response)
        if response.status_code != 200 and response.status_code != 201:
            # a redirect (never followed: it must not carry the token elsewhere) or no content
            raise KeygateError(f"the admin API answered {response.status_code}; check --admin-url")
        try:
            return response.json()
        except ValueError:
            raise KeygateError("the admin API answer is not JSON; check --admin-url") from None


def _error(response: httpx.Response) -> KeygateError:
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = f"the admin API answered {response.status_code}"
    return _BY_STATUS.get(response.status_code, KeygateError)(message)


def call(args: argparse.Namespace, method: str, path: str, json: Any = None, **params: str | None) -> Any:
    """One admin API request from the CLI; ``None`` query values are left out."""
    query = {k: v for k, v in params.items() if v is not None}
    return AdminClient(args.admin_url, args.env).request(method, path, json=json, params=query or None)
