"""Prometheus metrics (``keygate.metrics``) scraped from a real gateway's admin listener after
traffic from the official openai SDK through the mock upstream: counts, labels, tokens, spend,
time to first token, the scrape-time gauges, who may scrape, and that no secret is in the text."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keygate.config import load_settings
from keygate.limitconf import shipped_prices
from keygate.metrics import Metrics, Sources
from keygate.recorder import Recorder
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream
from keygate.types import UsageRow

from .admin.common import Admin, assert_openai_error
from .helpers import UPSTREAM_SECRET, Gateway, logged

MESSAGES = [{"role": "user", "content": "count these five words"}]
Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample of a scrape by its sample name (``keygate_requests_total`` ...)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == w for k, w in labels.items()))


@pytest.fixture(scope="module")
def admin(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with Gateway(tmp_path_factory.mktemp("metrics"), upstream.url) as gw:
        admin = Admin(gw)
        admin.tokens["metrics"] = json.loads(
            gw.cli("admin-tokens", "create", "--role", "metrics", "--json").stdout
        )
        gw.secrets.append(admin.tokens["metrics"]["token"])
        yield admin


def scrape(admin: Admin, role: str = "metrics") -> str:
    r = admin.client(role).get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def test_scrape_after_sdk_traffic(admin: Admin, mock: MockUpstream) -> None:
    gw = admin.gw
    budgeted = gw.create_key("budgeted", "--budget-usd", "5/month")
    limited = gw.create_key("limited", "--rpm", "1")
    client = openai.OpenAI(base_url=gw.url, api_key=budgeted["key"], max_retries=0)
    before = parse(scrape(admin))
    prompt = completion = 0
    for _ in range(2):
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert answer.usage is not None
        prompt, completion = prompt + answer.usage.prompt_tokens, completion + answer.usage.completion_tokens
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    free = openai.OpenAI(base_url=gw.url, api_key=gw.create_key("free")["key"], max_retries=0)
    unknown = free.chat.completions.create(model="my-own-finetune-xyz", messages=MESSAGES)  # type: ignore[arg-type]
    assert unknown.choices
    slow = openai.OpenAI(base_url=gw.url, api_key=limited["key"], max_retries=0)
    slow.models.list()
    with pytest.raises(openai.RateLimitError):
        slow.models.list()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url, api_key="kg_" + "x" * 40, max_retries=0).models.list()
    # Not on the public listener, with or without a token.
    public = httpx.get(
        gw.base + "/metrics", headers={"Authorization": f"Bearer {admin.tokens['metrics']['token']}"}
    )
    assert_openai_error(public, 404)

    text = scrape(admin)
    after = parse(text)

    def new(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    chat = {"route": "chat.completions", "model": "gpt-4o"}
    assert new("keygate_requests_total", **chat, status_class="2xx", outcome="allowed") == 3
    assert new("keygate_requests_total", route="chat.completions", model="other", outcome="allowed") == 1
    assert "my-own-finetune-xyz" not in text  # an unknown model name is not a label value
    assert (
        new("keygate_requests_total", route="models", model="none", status_class="2xx", outcome="allowed")
        == 1
    )
    assert new("keygate_requests_total", route="models", status_class="4xx", outcome="rate_limited") == 1
    assert new("keygate_requests_total", route="models", status_class="4xx", outcome="auth_failed") == 1
    assert new("keygate_requests_total", route="none", status_class="4xx", outcome="invalid_request") == 1
    assert not any("key_id" in labels for labels, _ in after["keygate_requests_total"])  # off by default
    # Durations: every request; upstream and overhead only for the forwarded ones; TTFT for the stream.
    assert new("keygate_gen_ai_server_request_duration_seconds_count") == 8
    assert new("keygate_gen_ai_client_operation_duration_seconds_count", upstream="openai") == 5
    assert new("keygate_gateway_overhead_seconds_count") == 5
    assert new("keygate_gen_ai_server_time_to_first_token_seconds_count", **chat) == 1
    assert new("keygate_gen_ai_server_time_to_first_token_seconds_sum", **chat) > 0
    # Tokens and spend: what the SDK was told, plus the stream's (reported to keygate, asked for it).
    stream_in = new("keygate_gen_ai_client_token_usage_sum", **chat, token_type="input") - prompt
    stream_out = new("keygate_gen_ai_client_token_usage_sum", **chat, token_type="output") - completion
    assert stream_in > 0 and stream_out > 0
    assert new("keygate_gen_ai_client_token_usage_count", **chat, token_type="input") == 3
    price = shipped_prices()["gpt-4o"]
    usd = price.cost(int(prompt + stream_in), 0, int(completion + stream_out))
    assert new("keygate_spend_usd_total", model="gpt-4o") == pytest.approx(usd)
    remaining = total(after, "keygate_budget_remaining_usd", budget=f"key:{budgeted['id']}", period="month")
    assert remaining == pytest.approx(5 - usd)
    # Scrape-time gauges.
    assert total(after, "keygate_requests_in_flight") == 0
    assert total(after, "keygate_upstream_key_state", upstream="openai", key_id="openai#0", state="up") == 1
    assert total(after, "keygate_upstream_key_state", key_id="openai#0", state="rejected") == 0
    keys = json.loads(gw.cli("keys", "list", "--json").stdout)
    assert total(after, "keygate_key_cache_keys") == len(keys)
    assert total(after, "keygate_key_cache_reloads_total") >= 2  # a reload for each key created
    assert "keygate_usage_queue_depth" in after
    assert total(after, "keygate_usage_write_failures_total") == 0
    # No secret of any kind in the scrape.
    for secret in [*gw.secrets, UPSTREAM_SECRET, budgeted["key"], limited["key"]]:
        assert secret not in text
        assert secret.split("_", 1)[-1] not in text


def test_requests_in_flight(admin: Admin, mock: MockUpstream) -> None:
    key = admin.gw.create_key("slow")["key"]
    mock.fail_next("slow", delay=1.0)
    client = openai.OpenAI(base_url=admin.gw.url, api_key=key, max_retries=0)
    done = threading.Event()

    def slow_request() -> None:
        client.models.list()
        done.set()

    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 5
    while total(parse(scrape(admin)), "keygate_requests_in_flight") != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not done.is_set()
    assert total(parse(scrape(admin)), "keygate_requests_in_flight") == 1
    thread.join(10)
    assert done.is_set()
    assert total(parse(scrape(admin)), "keygate_requests_in_flight") == 0


def test_who_may_scrape(admin: Admin) -> None:
    assert scrape(admin, "metrics") and scrape(admin, "admin")
    for role in ("key-manager", "auditor"):
        err = assert_openai_error(admin.client(role).get("/metrics"), 403)
        assert "metrics:read" in err["message"]
    assert assert_openai_error(admin.client(None).get("/metrics"), 401)["code"] == "missing_admin_token"
    wrong = admin.client(token="kga_" + "A" * 38).get("/metrics")
    assert assert_openai_error(wrong, 401)["code"] == "invalid_admin_token"
    # The metrics role can scrape and nothing else.
    metrics = admin.client("metrics")
    for path in (
        "/admin/keys",
        "/admin/teams",
        "/admin/usage",
        "/admin/audit",
        "/admin/tokens",
        "/openapi.json",
    ):
        assert_openai_error(metrics.get(path), 403)
    assert_openai_error(metrics.post("/admin/keys", json={"name": "nope"}), 403)
    assert assert_openai_error(metrics.get("/metrics?x=1"), 400)["code"] == "invalid_request"


def test_upstream_key_health_and_open_scrape(
    upstream: MockUpstream, mock: MockUpstream, tmp_path: Path
) -> None:
    extra = {"metrics": {"scrape_without_token_from": ["127.0.0.0/8"], "per_key_labels": True}}
    with Gateway(tmp_path / "open", upstream.url, extra=extra) as gw:
        key = gw.create_key("one")
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        client.models.list()
        mock.fail_next("429", retry_after=60)
        with pytest.raises(openai.RateLimitError):
            client.models.list()
        r = httpx.get(gw.admin_url + "/metrics")  # no token: 127.0.0.1 is in the open networks
        assert r.status_code == 200, r.text
        got = parse(r.text)
        assert total(got, "keygate_upstream_key_state", key_id="openai#0", state="cooling_down") == 1
        assert total(got, "keygate_upstream_key_state", key_id="openai#0", state="up") == 0
        assert total(got, "keygate_requests_total", key_id=key["id"], outcome="allowed") == 1
        assert total(got, "keygate_requests_total", key_id=key["id"], outcome="upstream_rate_limited") == 1
        assert key["key"] not in r.text and UPSTREAM_SECRET not in r.text
        # A 401 takes the (lone) key out of the rotation: rejected until enabled again.
        mock.fail_next("401")
        with pytest.raises(openai.APIStatusError):
            client.models.list()
        got = parse(httpx.get(gw.admin_url + "/metrics").text)
        assert total(got, "keygate_upstream_key_state", key_id="openai#0", state="rejected") == 1
        assert total(got, "keygate_upstream_key_state", key_id="openai#0", state="cooling_down") == 0
        assert (
            total(got, "keygate_requests_total", route="models", outcome="upstream_error", status_class="5xx")
            == 1
        )
    # A scraper outside the open networks still needs a token.
    closed = {"metrics": {"scrape_without_token_from": ["10.0.0.0/8"]}}
    with Gateway(tmp_path / "closed", upstream.url, extra=closed) as gw:
        assert_openai_error(httpx.get(gw.admin_url + "/metrics"), 401)


def test_metrics_settings_are_checked(tmp_path: Path) -> None:
    from keygate.errors import ConfigError

    cfg = tmp_path / "k.yaml"
    for bad, where in (
        ({"scrape_without_token_from": ["not-a-net"]}, "metrics.scrape_without_token_from"),
        ({"per_key_labels": "yes"}, "metrics.per_key_labels"),
        ({"models": [3]}, "metrics.models"),
        ({"scrape_from": []}, "metrics.scrape_from"),
    ):
        cfg.write_text(json.dumps({"metrics": bad}))
        with pytest.raises(ConfigError, match=where):
            load_settings(cfg, {"OPENAI_API_KEY": "sk-x"})
    cfg.write_text(json.dumps({"metrics": {"models": ["my-model"]}}))
    settings = load_settings(cfg, {"OPENAI_API_KEY": "sk-x"})
    assert settings.metrics.models == ("my-model",)
    # The model label: known names, a dated snapshot as its base name, anything else "other".
    metrics = Metrics(settings)
    labels = [
        metrics.model_label(m)
        for m in ("gpt-4o", "gpt-4o-2024-08-06", "gpt-4-0613", "my-model", "made-up", None)
    ]
    assert labels == ["gpt-4o", "gpt-4o", "gpt-4", "my-model", "other", "none"]
    assert all(metrics.model_label(f"made-up-{i}") == "other" for i in range(5000))
    assert len(metrics._labels) <= 4097  # unknown names are not remembered without bound


class FailingStore(SQLiteStore):
    """A real store whose usage writes fail (a full disk, say), until told otherwise."""

    failing = True

    def write_usage(self, rows: Any) -> None:
        if self.failing:
            raise OSError("disk full")
        super().write_usage(rows)


def test_usage_queue_and_write_failures(tmp_path: Path) -> None:
    asyncio.run(_usage_queue_and_write_failures(tmp_path))


async def _usage_queue_and_write_failures(tmp_path: Path) -> None:
    cfg = tmp_path / "k.yaml"
    cfg.write_text("{}")
    settings = load_settings(cfg, {"OPENAI_API_KEY": "sk-x"})
    store = FailingStore(tmp_path / "k.db")
    store.migrate()
    recorder = Recorder(store, str(tmp_path / "access.log"))
    metrics = Metrics(settings, Sources(recorder=recorder))
    row = UsageRow(
        time.time(),
        "kg-1",
        None,
        "models",
        "GET",
        "/v1/models",
        None,
        200,
        0,
        0,
        0,
        1.0,
        "ip",
        "openai",
        False,
    )
    for _ in range(3):
        recorder.record(row)
    got = parse((await metrics.exposition()).decode())
    assert total(got, "keygate_usage_queue_depth") == 3
    assert total(got, "keygate_usage_write_failures_total") == 0
    with logged("keygate.recorder"):
        await recorder.flush()  # fails: the rows stay queued
    got = parse((await metrics.exposition()).decode())
    assert total(got, "keygate_usage_write_failures_total") == 1
    assert total(got, "keygate_usage_queue_depth") == 3
    store.failing = False
    await recorder.close()
    got = parse((await metrics.exposition()).decode())
    assert total(got, "keygate_usage_queue_depth") == 0
    assert total(got, "keygate_usage_write_failures_total") == 1
    await metrics.close()
    store.close()
