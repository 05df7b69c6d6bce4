"""Alerts to real HTTP receivers: signed webhooks for a honeytoken use, a budget threshold, a
lockout, a rejected upstream key and a burst of policy denials; the Slack format; retries with
backoff; a bounded queue; a slow receiver never slows a request; no secret in any alert."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keygate.alerts import Alerter, signature
from keygate.audit_config import AlertSink
from keygate.testing import MockUpstream
from keygate.types import Secret

from .helpers import UPSTREAM_SECRET, Gateway, assert_no_secret_written

ALERT_SECRET = "whsec-test-0123456789abcdef0123456789"
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Receiver:
    """An HTTP server that keeps every POST (headers and body) and answers ``statuses`` in turn
    (then 204), after ``delay`` seconds each."""

    def __init__(self, delay: float = 0.0, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                time.sleep(delay)
                with outer.arrived:
                    outer.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    outer.arrived.notify_all()
                self.send_response(statuses.pop(0) if statuses else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]

    def wait_for(self, event: str, timeout: float = 10.0) -> tuple[dict[str, str], bytes, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for headers, body in self.posts:
                    doc = json.loads(body)
                    if doc.get("event") == event or event in str(doc.get("text", "")):
                        return headers, body, doc
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {event} alert arrived; got {self.alerts()}")
                self.arrived.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _check_signed(headers: dict[str, str], body: bytes, doc: dict[str, Any]) -> None:
    expected = "sha256=" + hmac.new(ALERT_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-keygate-signature"], expected)
    assert headers["x-keygate-timestamp"] == str(doc["sent_at"])
    assert abs(int(headers["x-keygate-timestamp"]) - time.time()) < 60
    assert headers["x-keygate-event"] == doc["event"] and len(doc["alert_id"]) == 32


def _gateway(tmp_path: Path, mock: MockUpstream, sinks: list[dict[str, Any]], **extra: Any) -> Gateway:
    return Gateway(tmp_path, mock.url, extra={"alerts": sinks, **extra}, env={"ALERT_SECRET": ALERT_SECRET})


def _security_entries(gw: Gateway, at_least: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        found: list[dict[str, Any]] = json.loads(gw.cli("audit", "--json", "--action", "security.").stdout)
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_honeytoken_use_is_alerted_signed_and_audited(
    tmp_path: Path, mock: MockUpstream, receiver: Receiver
) -> None:
    sink = {"url": receiver.url, "secret": "${ALERT_SECRET}"}
    export = tmp_path / "audit.jsonl"
    with _gateway(tmp_path, mock, [sink], audit={"export_file": str(export)}) as gw:
        trap = gw.create_key("canary", "--honeytoken")
        client = openai.OpenAI(base_url=gw.url, api_key=trap["key"], max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(**CHAT)
        headers, body, doc = receiver.wait_for("honeytoken_used")
        _check_signed(headers, body, doc)
        assert (doc["key_id"], doc["key_name"], doc["client_ip"]) == (trap["id"], "canary", "127.0.0.1")
        assert doc["severity"] == "high" and doc["path"] == "/v1/chat/completions"
        (entry,) = _security_entries(gw)
        assert entry["action"] == "security.honeytoken_used" and entry["target"] == trap["id"]
        assert (entry["actor"], entry["origin"]) == (f"key:{trap['id']}", "127.0.0.1")
        assert entry["details"]["key_name"] == "canary" and "authorization" not in entry["details"]["headers"]
        assert gw.cli("audit", "verify").returncode == 0
        # Exported by the gateway's security-audit thread as it wrote the entry (after the CLI's).
        exported = [json.loads(line) for line in export.read_text().splitlines()]
        assert [e["action"] for e in exported] == ["keys.create", "security.honeytoken_used"]
        assert exported[1]["hash"] == entry["hash"]
        out = gw.workdir / "alerts.bin"
        out.write_bytes(
            b"\n".join(b for _, b in receiver.posts) + json.dumps(list(receiver.posts[0][0].items())).encode()
        )
        assert_no_secret_written([out, export, gw.workdir / "keygate.db"], [*gw.secrets, ALERT_SECRET])


def test_a_budget_threshold_and_exhaustion_are_alerted(
    tmp_path: Path, mock: MockUpstream, receiver: Receiver
) -> None:
    sink = {
        "url": receiver.url,
        "secret": "${ALERT_SECRET}",
        "events": ["budget_soft_threshold", "budget_exhausted"],
    }
    limits = {"soft_threshold": 0.5, "default_max_output_tokens": 10}
    with _gateway(tmp_path, mock, [sink], limits=limits) as gw:
        key = gw.create_key("metered", "--budget-tokens", "40/day")
        client = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        client.chat.completions.create(**CHAT)  # 2 + 3 tokens: under half
        for _ in range(6):
            try:
                client.chat.completions.create(**CHAT)
            except openai.RateLimitError:
                break
        headers, body, doc = receiver.wait_for("budget_soft_threshold")
        _check_signed(headers, body, doc)
        assert (doc["scope"], doc["id"], doc["name"], doc["kind"]) == ("key", key["id"], "metered", "tokens")
        assert doc["budget"] == 40 and doc["threshold"] == 0.5 and doc["spent"] >= 20
        # Exhaustion: alerted once however many requests it refuses; nothing else (the filter).
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**CHAT)
        _, _, exhausted = receiver.wait_for("budget_exhausted")
        assert exhausted["id"] == key["id"] and exhausted["period"] == "day"
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**CHAT)
        time.sleep(0.3)
        events = [a["event"] for a in receiver.alerts()]
        assert events.count("budget_soft_threshold") == 1 and events.count("budget_exhausted") == 1
        assert set(events) == {"budget_soft_threshold", "budget_exhausted"}
        actions = {e["action"] for e in _security_entries(gw, 2)}
        assert actions == {"security.budget_soft_threshold", "security.budget_exhausted"}


def test_lockouts_rejected_upstream_keys_and_denial_bursts(
    tmp_path: Path, mock: MockUpstream, receiver: Receiver
) -> None:
    sink = {"url": receiver.url, "format": "slack"}
    extra = {
        "network": {"lockout": {"max_failures": 3, "window": 60, "duration": 60}},
        "audit": {"policy_denials": 3, "policy_denials_window": 60},
    }
    with _gateway(tmp_path, mock, [sink], **extra) as gw:
        key = gw.create_key("narrow", "--allow-model", "gpt-4o")
        narrow = openai.OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        for _ in range(4):
            with pytest.raises(openai.PermissionDeniedError):
                narrow.chat.completions.create(**CHAT)
        _, _, doc = receiver.wait_for("policy_denials")
        assert f"key_id={key['id']}" in doc["text"] and "key_name=narrow" in doc["text"]
        mock.set_api_keys(["sk-some-other-key-entirely-0123456789"])
        ok = openai.OpenAI(base_url=gw.url, api_key=gw.create_key("plain")["key"], max_retries=0)
        with pytest.raises(openai.APIStatusError):
            ok.chat.completions.create(**{**CHAT, "model": "gpt-4o"})
        _, _, doc = receiver.wait_for("upstream_key_rejected")
        assert "upstream=openai" in doc["text"] and "upstream_status=401" in doc["text"]
        # Last: the lockout refuses everything from this address for a minute.
        bad = openai.OpenAI(base_url=gw.url, api_key="kg_" + "x" * 40, max_retries=0)
        for _ in range(3):
            with pytest.raises(openai.AuthenticationError):
                bad.chat.completions.create(**CHAT)
        headers, _, doc = receiver.wait_for("lockout")
        assert (
            set(doc) == {"text"}
            and "client_ip=127.0.0.1" in doc["text"]
            and "x-keygate-signature" not in headers
        )
        actions = [e["action"] for e in _security_entries(gw, 3)]
        assert sorted(actions) == [
            "security.lockout",
            "security.policy_denials",
            "security.upstream_key_rejected",
        ]
        assert gw.cli("audit", "verify").returncode == 0
        texts = "\n".join(str(a) for a in receiver.alerts())
        assert UPSTREAM_SECRET not in texts and key["key"] not in texts and "x" * 40 not in texts


def test_a_slow_receiver_does_not_slow_requests(tmp_path: Path, mock: MockUpstream) -> None:
    slow = Receiver(delay=5.0)
    sink = {"url": slow.url, "secret": "${ALERT_SECRET}", "timeout": 10, "retries": 0}
    try:
        with _gateway(tmp_path, mock, [sink]) as gw:
            trap = gw.create_key("canary", "--honeytoken")["key"]
            good = openai.OpenAI(base_url=gw.url, api_key=gw.create_key("good")["key"], max_retries=0)
            good.chat.completions.create(**CHAT)  # warm up
            with httpx.Client(base_url=gw.url) as raw:
                latencies = []
                for _ in range(10):
                    # Each honeytoken use queues an alert for the receiver that takes 5 s per alert.
                    r = raw.post("/chat/completions", json=CHAT, headers={"authorization": f"Bearer {trap}"})
                    assert r.status_code == 401
                    start = time.perf_counter()
                    good.chat.completions.create(**CHAT)
                    latencies.append(time.perf_counter() - start)
            assert max(latencies) < 0.5 and statistics.median(latencies) < 0.1, latencies
            with slow.arrived:
                assert len(slow.posts) <= 1  # the receiver is still busy with the first alert
    finally:
        slow.close()


def test_failed_deliveries_are_retried_with_backoff_and_the_same_id(receiver: Receiver) -> None:
    flaky = Receiver(statuses=[500, 503])
    alerter = Alerter([AlertSink(url=flaky.url, secret=Secret(ALERT_SECRET), backoff=0.05)])
    try:
        alerter.emit("lockout", client_ip="192.0.2.1")
        alerter.close(timeout=5)
        assert len(flaky.posts) == 3
        ids = {json.loads(body)["alert_id"] for _, body in flaky.posts}
        assert len(ids) == 1
        for headers, body in flaky.posts:
            assert headers["x-keygate-signature"] == signature(ALERT_SECRET, body)
    finally:
        flaky.close()


def test_a_full_queue_drops_and_counts_and_emit_never_blocks() -> None:
    slow = Receiver(delay=2.0)
    alerter = Alerter([AlertSink(url=slow.url, queue_size=2, retries=0, timeout=5)])
    try:
        start = time.perf_counter()
        for i in range(50):
            alerter.emit(
                "custom_event", n=i, secret=Secret("sk-never-shown-0123456789"), note="sk-abcdef0123456789xyz"
            )
        assert time.perf_counter() - start < 0.1
        assert alerter.dropped >= 47 and alerter.emitted == 50
        alerter.close(timeout=0.2)
    finally:
        slow.close()
    for _, body in slow.posts:
        assert b"sk-never-shown" not in body and b"sk-abcdef0123456789xyz" not in body


def test_alert_settings_are_checked(tmp_path: Path) -> None:
    from keygate.config import load_settings
    from keygate.errors import ConfigError

    def load(alerts: object, env: dict[str, str] | None = None) -> object:
        (tmp_path / "k.yaml").write_text(json.dumps({"alerts": alerts}))
        return load_settings(tmp_path / "k.yaml", env or {})

    with pytest.raises(ConfigError, match=r"alerts\[0\]\.secret: a webhook sink needs"):
        load([{"url": "https://hooks.example/x"}])
    with pytest.raises(ConfigError, match="literal secrets are not allowed"):
        load([{"url": "https://hooks.example/x", "secret": "hunter2"}])
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.url: https is required"):
        load([{"url": "http://hooks.example/x", "format": "slack"}])
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.secret: \$\{NOPE\} is unset"):
        load([{"url": "https://hooks.example/x", "secret": "${NOPE}"}])
    with pytest.raises(ConfigError, match=r"alerts\[0\]\.colour: unknown setting"):
        load([{"url": "https://hooks.example/x", "format": "slack", "colour": "red"}])
    settings: Any = load(
        [{"url": "https://hooks.example/x", "secret": "${S}", "events": ["lockout"]}], {"S": "v" * 20}
    )
    (sink,) = settings.alerts
    assert sink.secret.reveal() == "v" * 20 and sink.events == ("lockout",) and "v" * 20 not in repr(sink)


def test_the_audit_stream_goes_to_syslog_over_udp(tmp_path: Path, mock: MockUpstream) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    try:
        with Gateway(tmp_path, mock.url, extra={"audit": {"syslog": f"udp:127.0.0.1:{port}"}}) as gw:
            key = gw.create_key("logged")
            data = sock.recv(65536).decode()
        assert data.startswith("<38>")  # facility auth (4) * 8 + info (6)
        entry = json.loads(data.split("keygate-audit: ", 1)[1].rstrip("\x00"))
        assert (entry["seq"], entry["action"], entry["target"]) == (1, "keys.create", key["id"])
        assert key["key"] not in data
    finally:
        sock.close()


def test_a_burst_of_failed_admin_authentications_is_audited_and_alerted(
    tmp_path: Path, mock: MockUpstream, receiver: Receiver
) -> None:
    sink = {"url": receiver.url, "secret": "${ALERT_SECRET}", "events": ["admin_auth_failures"]}
    audit = {
        "admin_auth_failures": 3,
        "admin_auth_failures_window": 60,
        "export_file": str(tmp_path / "a.jsonl"),
    }
    with _gateway(tmp_path, mock, [sink], audit=audit) as gw:
        guess = "kga_" + "g" * 40
        with httpx.Client(base_url=gw.admin_url, headers={"authorization": f"Bearer {guess}"}) as api:
            for _ in range(5):
                assert api.get("/admin/keys").status_code == 401
        headers, body, doc = receiver.wait_for("admin_auth_failures")
        _check_signed(headers, body, doc)
        assert doc["client_ip"] == "127.0.0.1" and doc["failures"] == 3
        (entry,) = _security_entries(gw)  # once per window, not once per failure
        assert (entry["action"], entry["actor"], entry["origin"]) == (
            "security.admin_auth_failures",
            "client",
            "127.0.0.1",
        )
        exported = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
        assert [e["action"] for e in exported] == ["security.admin_auth_failures"]
        assert exported[0]["hash"] == entry["hash"]
        assert guess.encode() not in body and guess not in json.dumps(exported)


def test_the_audit_stream_goes_to_a_unix_syslog_socket(tmp_path: Path, mock: MockUpstream) -> None:
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        with Gateway(tmp_path, mock.url, extra={"audit": {"syslog": f"unix:{path}"}}) as gw:
            gw.cli("teams", "create", "red")
            data = sock.recv(65536).decode()
        entry = json.loads(data.split("keygate-audit: ", 1)[1].rstrip("\x00"))
        assert (entry["seq"], entry["action"]) == (1, "teams.create")
    finally:
        sock.close()


def test_a_failed_verification_is_alerted_by_the_cli(
    tmp_path: Path, mock: MockUpstream, receiver: Receiver
) -> None:
    import sqlite3

    sink = {"url": receiver.url, "secret": "${ALERT_SECRET}"}
    with _gateway(tmp_path, mock, [sink]) as gw:
        gw.create_key("one")
        gw.create_key("two")
        with sqlite3.connect(gw.workdir / "keygate.db") as db:
            db.execute("UPDATE audit SET target = 'key_other' WHERE id = 2")
        r = gw.cli("audit", "verify", check=False)
        assert r.returncode == 1
        headers, body, doc = receiver.wait_for("audit_verify_failed", timeout=1)  # sent before exit
        _check_signed(headers, body, doc)
        assert (doc["problem"], doc["seq"], doc["by"]) == ("altered", 2, "cli")
