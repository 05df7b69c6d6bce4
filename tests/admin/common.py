"""A running gateway with one admin token per role, and checks of the admin API's answers (shared
by the admin-API and the CLI's remote-mode tests)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from ..helpers import Gateway


class Admin:
    """A running gateway with one admin token per role (``init`` makes the first, an admin)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.tokens: dict[str, dict[str, Any]] = {}
        self.tokens["admin"] = json.loads(gw.cli("init", "--json").stdout)
        for role in ("key-manager", "auditor"):
            self.tokens[role] = json.loads(gw.cli("admin-tokens", "create", "--role", role, "--json").stdout)
        gw.secrets.extend(t["token"] for t in self.tokens.values())

    def client(self, role: str | None = "admin", token: str | None = None) -> httpx.Client:
        secret = token or (self.tokens[role]["token"] if role else None)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.gw.admin_url, headers=headers, timeout=10)


def eventually(fetch: Any, timeout: float = 10.0) -> Any:
    """Poll until ``fetch()`` returns something non-empty (usage is written in batches)."""
    deadline = time.monotonic() + timeout
    while not (value := fetch()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    """``r`` is an error of ``status`` in OpenAI's shape; its ``error`` object."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err
