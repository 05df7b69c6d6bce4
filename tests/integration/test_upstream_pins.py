"""Client keys pinned to an upstream, the least_in_flight strategy, and `upstreams enable`."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET, Gateway, assert_no_secret_written

K1 = "sk-proj-PIN-key-one-1111111111111111111"
K2 = "sk-proj-PIN-key-two-2222222222222222222"
KB = "sk-proj-PIN-beta-key-bbbbbbbbbbbbbbbbbb"
MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
CHAT: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def bearers(mock: MockUpstream) -> list[str]:
    return [r.headers.get("authorization", "")[7:] for r in mock.requests]


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)


def two_key_gateway(tmp_path: Path, url: str, **upstream: Any) -> Gateway:
    config = {"base_url": url, "api_keys": ["${K1}", "${K2}"], **upstream}
    gw = Gateway(
        tmp_path,
        url,
        extra={"upstreams": {"openai": config}, "key_refresh_interval": 0.05},
        env={"K1": K1, "K2": K2},
    )
    gw.secrets += [K1, K2]
    return gw


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_keys_pinned_to_config_and_stored_upstreams(tmp_path: Path, mock: MockUpstream) -> None:
    with MockUpstream(api_keys=[KB]) as beta:
        gw = Gateway(tmp_path, mock.url, env={"KEYGATE_MASTER_KEY": MASTER})
        gw.secrets += [KB, MASTER]
        gw.cli("upstreams", "add", "beta", "--base-url", beta.url, "--key-stdin", input=KB + "\n")
        refused = gw.cli("keys", "create", "--name", "x", "--upstream", "nope", check=False)
        assert refused.returncode != 0 and "no upstream named 'nope'" in refused.stderr
        with gw:
            pinned_beta = gw.create_key("b", "--upstream", "beta")
            pinned_openai = gw.create_key("o", "--upstream", "openai")
            unpinned = gw.create_key("d")
            assert pinned_beta["upstream"] == "beta" and unpinned["upstream"] is None
            for data in (pinned_beta, pinned_openai, unpinned, pinned_beta):
                assert sdk(gw, data["key"]).chat.completions.create(**CHAT).choices
            assert bearers(beta) == [KB, KB]
            assert bearers(mock) == [UPSTREAM_SECRET, UPSTREAM_SECRET]

            listed = {v["id"]: v["upstream"] for v in json.loads(gw.cli("keys", "list", "--json").stdout)}
            assert listed[pinned_beta["id"]] == "beta" and listed[unpinned["id"]] is None
            table = gw.cli("keys", "list").stdout
            assert "UPSTREAM" in table and "beta" in table

            bad = gw.cli("keys", "update", pinned_beta["id"], "--upstream", "nope", check=False)
            assert bad.returncode != 0 and "nope" in bad.stderr
            gw.cli("keys", "update", pinned_beta["id"], "--upstream", "")  # unpin: default upstream
            sdk(gw, pinned_beta["key"]).models.list()
            assert len(bearers(beta)) == 2 and bearers(mock)[-1] == UPSTREAM_SECRET
            gw.cli("keys", "update", unpinned["id"], "--upstream", "beta")
            sdk(gw, unpinned["key"]).models.list()
            assert bearers(beta) == [KB] * 3
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_least_in_flight_avoids_the_busy_key(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([K1, K2])
    with two_key_gateway(tmp_path, mock.url, strategy="least_in_flight") as gw:
        client = sdk(gw, gw.create_key()["key"])
        mock.fail_next("slow", delay=10.0)  # each event of the first stream is held back
        stream = client.chat.completions.create(**CHAT, stream=True)
        try:
            (busy,) = bearers(mock)
            idle = K2 if busy == K1 else K1
            for _ in range(4):
                client.models.list()
            assert bearers(mock)[1:] == [idle] * 4  # round robin would have used the busy key twice
        finally:
            stream.close()
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_enable_puts_a_rejected_key_back(tmp_path: Path, mock: MockUpstream) -> None:
    mock.set_api_keys([K2])  # K1 is refused by the provider for a while
    with two_key_gateway(tmp_path, mock.url) as gw:
        client = sdk(gw, gw.create_key()["key"])
        for _ in range(3):
            client.models.list()
        assert bearers(mock).count(K1) == 1  # rejected once, then out of the rotation
        mock.set_api_keys([K1, K2])  # the provider accepts K1 again
        mock.reset()
        for _ in range(4):
            client.models.list()
        assert bearers(mock) == [K2] * 4

        unknown = gw.cli("upstreams", "enable", "openai", "openai#7", check=False)
        assert unknown.returncode != 0 and "openai#7" in unknown.stderr
        other = gw.cli("upstreams", "enable", "nope", "openai#0", check=False)
        assert other.returncode != 0
        done = gw.cli("upstreams", "enable", "openai", "openai#0")
        assert "back into rotation" in done.stdout
        wait_for(lambda: "enabled by an operator" in gw.stderr_path.read_text(), "no reload after enable")
        mock.reset()
        for _ in range(4):
            client.models.list()
        assert sorted(bearers(mock)) == [K1, K1, K2, K2]
    db = sqlite3.connect(tmp_path / "keygate.db")
    rows = db.execute("SELECT target, details FROM audit WHERE action = 'upstreams.enable'").fetchall()
    db.close()
    assert rows == [("openai#0", '{"upstream":"openai"}')]
    assert_no_secret_written(gw.written_files(), gw.secrets)
