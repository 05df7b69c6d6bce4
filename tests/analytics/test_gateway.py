"""Behavioural analytics through a real gateway: a leaked key is quarantined and released, a
stuffing address is blocked, observe mode acts on nothing, and baselines survive a restart.

Clients present many addresses over loopback through ``X-Forwarded-For`` (loopback is a trusted
proxy here). The learning period is zero and five requests teach a key its baseline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keygate import keys
from keygate.keycache import KeyCache
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream

from ..admin.common import Admin
from ..helpers import Gateway, assert_no_secret_written

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def config(mode: str = "act") -> dict[str, Any]:
    return {
        "network": {"trusted_proxies": ["127.0.0.1/32"]},
        "anomalies": {
            "mode": mode,
            "interval": 0.05,
            "learning_period": 0,
            "min_learning_requests": 5,
            "snapshot_interval": 0.1,
        },
    }


@pytest.fixture
def gw(tmp_path: Path, mock: MockUpstream, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    mode = getattr(request, "param", "act")
    gateway = Gateway(tmp_path / "gw", mock.url, extra=config(mode)).start()
    try:
        yield gateway
    finally:
        gateway.stop()
    # Not a key, presented or issued, in the database, the logs or the access log.
    assert_no_secret_written(gateway.written_files(), gateway.secrets)


def bad_key(gw: Gateway) -> str:
    """A well-formed key keygate never issued (collected for the leak search)."""
    key = keys.generate()
    gw.secrets.append(key)
    return key


def send(gw: Gateway, key: str, ip: str, http: httpx.Client | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": ip}
    if http is not None:
        return http.post(gw.url + "/chat/completions", json=BODY, headers=headers)
    return httpx.post(gw.url + "/chat/completions", json=BODY, headers=headers, timeout=10)


def poll(fetch: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := fetch()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
    return value


def store_of(gw: Gateway) -> SQLiteStore:
    return SQLiteStore(gw.settings().database_path)


def learned(gw: Gateway, key_id: str, requests: int) -> None:
    """Wait until the stored baseline of ``key_id`` counts ``requests`` requests."""
    store = store_of(gw)
    try:

        def ready() -> bool:
            data = store.load_baselines().get(f"key:{key_id}")
            return data is not None and json.loads(data)["n"] >= requests

        poll(ready)
    finally:
        store.close()


def events(gw: Gateway, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(gw.cli("anomalies", "--json", *args).stdout)
    return found


def teach(gw: Gateway, key: str, key_id: str, ip: str = "10.1.1.5") -> None:
    with httpx.Client(timeout=10) as http:
        for _ in range(6):
            assert send(gw, key, ip, http).status_code == 200
    learned(gw, key_id, 6)


def test_a_key_used_from_twenty_new_networks_is_quarantined_until_released(gw: Gateway) -> None:
    created = gw.create_key("leaky")
    key, key_id = created["key"], created["id"]
    teach(gw, key, key_id)
    with httpx.Client(timeout=10) as http:
        for i in range(20):
            assert send(gw, key, f"10.2.{i}.7", http).status_code in (200, 403)
    client = openai.OpenAI(
        api_key=key, base_url=gw.url, max_retries=0, default_headers={"X-Forwarded-For": "10.1.1.5"}
    )

    def refused() -> openai.PermissionDeniedError | None:
        try:
            client.chat.completions.create(**BODY)  # type: ignore[call-overload]
        except openai.PermissionDeniedError as exc:
            return exc
        return None

    err = poll(refused)
    assert err.status_code == 403 and err.code == "key_quarantined"
    assert err.body["type"] == "permission_denied"  # OpenAI's shape

    found = events(gw, "--key", key_id)
    many = [e for e in found if e["detector"] == "many_networks"]
    assert many and many[0]["action"] == "quarantine" and many[0]["acted"] is True
    assert many[0]["evidence"]["count"] >= 5 and "10.1.1.0/24" in many[0]["evidence"]["known_networks"]
    assert all(n.startswith("10.2.") for n in many[0]["evidence"]["new_networks"])
    assert key not in json.dumps(found)  # the evidence never holds the secret

    store = store_of(gw)
    try:
        assert key_id in store.list_quarantines()
        audit = store.list_audit(action="keys.quarantine")
        assert audit and audit[0].target == key_id and audit[0].actor == "analytics"
        alerts = store.list_audit(action="alert.anomaly")  # the alert sink's audit entries
        assert any(a.details.get("detector") == "many_networks" for a in alerts)
    finally:
        store.close()
    assert any(e.get("alert") == "anomaly" for e in gw.log_entries())  # ... and the operator log

    # Stored: another process's key cache (another instance on the same store) refuses it too.
    other = store_of(gw)
    try:
        assert key_id in KeyCache(other).quarantined
    finally:
        other.close()
    out = gw.cli("keys", "release", key_id).stdout
    assert f"Released {key_id}." in out
    assert client.chat.completions.create(**BODY).choices  # type: ignore[call-overload]
    store = store_of(gw)
    try:
        released = store.list_audit(action="keys.release")
        assert released and released[0].target == key_id and released[0].actor.startswith("cli:")
    finally:
        store.close()
    assert "was not quarantined" in gw.cli("keys", "release", key_id).stdout

    # Acknowledge the event (audited).
    acked = json.loads(gw.cli("anomalies", "ack", many[0]["id"], "--json").stdout)
    assert acked["acked_by"].startswith("cli:")
    table = gw.cli("anomalies", "--key", key_id, "--since", "1h").stdout
    assert "many_networks" in table and many[0]["id"] in table


def test_credential_stuffing_from_one_address_blocks_it(gw: Gateway) -> None:
    good = gw.create_key("good")["key"]
    with httpx.Client(timeout=10) as http:
        for _ in range(8):
            assert send(gw, bad_key(gw), "10.9.9.9", http).status_code == 401

        def blocked() -> httpx.Response | None:
            r = send(gw, good, "10.9.9.9", http)
            return r if r.status_code == 429 else None

        r = poll(blocked)
        assert r.json()["error"]["code"] == "network_blocked" and int(r.headers["retry-after"]) > 0
        assert send(gw, good, "10.9.9.10", http).status_code == 200  # only that address
    stuffing = [e for e in events(gw) if e["detector"] == "credential_stuffing"]
    assert stuffing and stuffing[0]["subject"] == "10.9.9.9" and stuffing[0]["key_id"] is None
    assert stuffing[0]["evidence"]["distinct_credentials"] >= 8 and stuffing[0]["action"] == "block_network"


@pytest.mark.parametrize("gw", ["observe"], indirect=True)
def test_observe_mode_reports_and_acts_on_nothing(gw: Gateway) -> None:
    created = gw.create_key("watched")
    key, key_id = created["key"], created["id"]
    teach(gw, key, key_id)
    with httpx.Client(timeout=10) as http:
        for i in range(20):
            assert send(gw, key, f"10.2.{i}.7", http).status_code == 200
        for _ in range(10):
            assert send(gw, bad_key(gw), "10.9.9.9", http).status_code == 401
        found = poll(
            lambda: [e for e in events(gw) if e["detector"] in ("many_networks", "credential_stuffing")]
        )
        poll(lambda: {e["detector"] for e in events(gw)} >= {"many_networks", "credential_stuffing"})
        assert send(gw, key, "10.1.1.5", http).status_code == 200  # not quarantined
        assert send(gw, key, "10.9.9.9", http).status_code == 200  # not blocked
    assert found and all(e["acted"] is False for e in events(gw))
    store = store_of(gw)
    try:
        assert store.list_quarantines() == {} and store.list_audit(action="alert.anomaly") == []
    finally:
        store.close()
    assert "(observed)" in gw.cli("anomalies").stdout


def test_a_restart_keeps_the_baselines(gw: Gateway) -> None:
    created = gw.create_key("steady")
    key, key_id = created["key"], created["id"]
    teach(gw, key, key_id)
    gw.stop()
    gw.start()
    with httpx.Client(timeout=10) as http:
        # Known: the restarted gateway learned it before; new: reported at once (a gateway that
        # had forgotten would be learning again and report nothing for five requests).
        assert send(gw, key, "10.1.1.6", http).status_code == 200
        assert send(gw, key, "10.3.3.5", http).status_code == 200
    found = poll(lambda: [e for e in events(gw, "--key", key_id) if e["detector"] == "new_network"])
    assert [e["evidence"]["network"] for e in found] == ["10.3.3.0/24"]
    assert found[0]["evidence"]["known_networks"] == ["10.1.1.0/24"]


def test_the_admin_api_lists_acknowledges_and_releases(gw: Gateway) -> None:
    admin = Admin(gw)
    created = gw.create_key("api")
    key, key_id = created["key"], created["id"]
    teach(gw, key, key_id)
    with httpx.Client(timeout=10) as http:
        for i in range(6):
            send(gw, key, f"10.4.{i}.1", http)
        poll(lambda: send(gw, key, "10.1.1.5", http).status_code == 403)
    with admin.client("auditor") as api:
        listed = api.get("/admin/anomalies", params={"key": key_id, "since": "1h"}).json()
        assert any(e["detector"] == "many_networks" for e in listed)
        assert api.post(f"/admin/keys/{key_id}/release").status_code == 403  # an auditor may not
        bad = api.get("/admin/anomalies", params={"since": "yesterday"})
        assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("since:")
    with admin.client("key-manager") as api:
        r = api.post(f"/admin/keys/{key_id}/release")
        assert r.status_code == 200 and r.json() == {
            "key_id": key_id,
            "released": True,
            "was_quarantined": True,
        }
        acked = api.post(f"/admin/anomalies/{listed[0]['id']}/ack").json()
        assert acked["acked_by"] == admin.tokens["key-manager"]["id"]
        assert api.post("/admin/anomalies/anm_nope/ack").status_code == 404
    assert send(gw, key, "10.1.1.5").status_code == 200
    # The CLI against the admin API: the same operations.
    gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["key-manager"]["token"]
    remote = json.loads(gw.cli("anomalies", "--admin-url", gw.admin_url, "--key", key_id, "--json").stdout)
    assert [e["id"] for e in remote] == [e["id"] for e in events(gw, "--key", key_id)]
    assert "was not quarantined" in gw.cli("keys", "release", "--admin-url", gw.admin_url, key_id).stdout
    out = gw.cli("anomalies", "ack", "--admin-url", gw.admin_url, remote[-1]["id"]).stdout
    assert out.startswith(f"Acknowledged {remote[-1]['id']}")


def test_a_honeytoken_use_is_an_anomaly_and_still_answered_as_an_unknown_key(gw: Gateway) -> None:
    honey = gw.create_key("bait", "--honeytoken")
    r = send(gw, honey["key"], "10.7.7.7")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    found = poll(lambda: [e for e in events(gw) if e["detector"] == "honeytoken"])
    assert found[0]["key_id"] == honey["id"] and found[0]["subject"] == "10.7.7.7"
    assert honey["key"] not in json.dumps(events(gw))
