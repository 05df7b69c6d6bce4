"""The analytics' parts on their own: settings, the store's tables, baselines, features."""

from __future__ import annotations

from pathlib import Path

import pytest

from keygate import keys
from keygate.analytics.baselines import KeyState
from keygate.analytics.engine import Analyser
from keygate.analytics.features import agent_family, credential_prefix, fingerprint, network_of
from keygate.anomalyconf import AnomalySettings
from keygate.config import load_settings
from keygate.errors import ConfigError
from keygate.store import AnomalyRow, SQLiteStore
from keygate.types import AuditRecord

AUDIT = AuditRecord(0.0, "test", "local", "x", "y")


def settings(tmp_path: Path, text: str) -> AnomalySettings:
    path = tmp_path / "k.yaml"
    path.write_text(text)
    return load_settings(path, {}).anomalies


def test_settings_defaults_durations_and_errors(tmp_path: Path) -> None:
    s = settings(
        tmp_path, "anomalies:\n  learning_period: 3d\n  detectors:\n    surge: {action: alert, window: 10m}\n"
    )
    assert s.learning_period == 3 * 86400 and s.mode == "act"
    assert s.detectors["surge"].action == "alert" and s.detectors["surge"].window == 600
    assert s.detectors["many_networks"].action == "quarantine"  # the others keep their defaults
    with pytest.raises(ConfigError, match=r"anomalies\.detectors\.leak: unknown detector"):
        settings(tmp_path, "anomalies:\n  detectors:\n    leak: {}\n")
    with pytest.raises(ConfigError, match=r"anomalies\.detectors\.surge\.action: expected one of log, alert"):
        settings(tmp_path, "anomalies:\n  detectors:\n    surge: {action: ban}\n")
    with pytest.raises(ConfigError, match=r"anomalies\.mode"):
        settings(tmp_path, "anomalies:\n  mode: dry\n")
    with pytest.raises(ConfigError, match=r"anomalies\.learning_period: expected a duration"):
        settings(tmp_path, "anomalies:\n  learning_period: soon\n")
    with pytest.raises(ConfigError, match=r"anomalies\.ipv4_prefix"):
        settings(tmp_path, "anomalies:\n  ipv4_prefix: 33\n")


def test_the_store_keeps_events_quarantines_and_baselines(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "a.db", audit_key=b"t" * 32)
    store.migrate()
    other = SQLiteStore(tmp_path / "a.db", audit_key=b"t" * 32)
    try:
        other.keys_changed()
        rows = [
            AnomalyRow(
                f"anm_{i}",
                100.0 + i,
                "surge",
                "key_1" if i else "key_2",
                None,
                "key_1",
                9.5,
                "alert",
                True,
                {"observed": i},
            )
            for i in range(3)
        ]
        store.write_anomalies(rows)
        store.write_anomalies(rows[:1])  # the same id twice is written once
        assert [r.id for r in store.list_anomalies()] == ["anm_2", "anm_1", "anm_0"]
        assert [r.id for r in store.list_anomalies("key_1", since=101.5)] == ["anm_2"]
        assert store.ack_anomaly("anm_1", "me", 5.0, AUDIT) and not store.ack_anomaly(
            "anm_1", "me", 6.0, AUDIT
        )
        assert store.get_anomaly("anm_1") == AnomalyRow(
            "anm_1", 101.0, "surge", "key_1", None, "key_1", 9.5, "alert", True, {"observed": 1}, 5.0, "me"
        )

        assert store.quarantine_key("key_1", 7.0, "anm_2", "surge", AUDIT)
        assert other.keys_changed()  # another process's key cache notices
        assert not store.quarantine_key("key_1", 8.0, "anm_3", "surge", AUDIT)
        assert not other.keys_changed()  # nothing written the second time
        assert store.list_quarantines() == {"key_1": (7.0, "anm_2", "surge")}
        assert store.release_key("key_1", AUDIT) and not store.release_key("key_1", AUDIT)
        assert other.keys_changed() and store.list_quarantines() == {}

        store.save_baselines([("key:key_1", '{"n": 1}')], 1.0)
        store.save_baselines([("key:key_1", '{"n": 2}'), ("team:t", "{}")], 2.0)
        assert store.load_baselines() == {"key:key_1": '{"n": 2}', "team:t": "{}"}
    finally:
        other.close()
        store.close()


def test_a_baseline_survives_its_snapshot() -> None:
    analyser = Analyser(AnomalySettings())
    row = (
        1000.0,
        "key_1",
        "team_1",
        "10.1.2.3",
        "OpenAI/Python 1.55.3",
        "gpt-4o-mini",
        "chat.completions",
        200,
        None,
        30,
        10,
        0,
    )
    analyser.process([row], 1001.0)
    snapshot = dict(analyser.snapshot())
    assert set(snapshot) == {"key:key_1", "team:team_1"} and analyser.snapshot() == []  # only what changed
    again = Analyser(AnomalySettings())
    assert again.restore({**snapshot, "key:broken": {"first": "x"}, "odd:1": {}}) == 2
    state = again.keys["key_1"]
    assert state.n == 1 and "10.1.2.0/24" in state.nets and state.dump() == KeyState.load(state.dump()).dump()
    assert "10.1.2.0/24" in again.teams["team_1"].nets


def test_features_never_hold_the_secret() -> None:
    secret = keys.generate()
    fp = fingerprint(secret)
    assert (
        fp == fingerprint(secret) != fingerprint(keys.generate()) and len(fp) == 16 and secret[3:] not in fp
    )
    assert credential_prefix(secret) == secret[:7] and credential_prefix("sk-other") == "?"
    assert agent_family("OpenAI/Python 1.55.3") == agent_family("OpenAI/Python 1.56.0") == "OpenAI/Python #"
    assert network_of("2001:db8:1:2::5", 24, 48) == "2001:db8:1::/48" and network_of("nope", 24, 48) == "-"


def test_a_throttled_key_is_held_to_the_lower_rate_and_a_blocked_network_refused(tmp_path: Path) -> None:
    import time

    from keygate.analytics.watch import AnomalyWatch
    from keygate.guards.anomaly import AnomalyGate, AnomalyRecord
    from keygate.guards.client_ip import parse_ip
    from keygate.keycache import KeyCache
    from keygate.testing import context, key_record

    store = SQLiteStore(tmp_path / "t.db", audit_key=b"t" * 32)
    store.migrate()
    try:
        watch = AnomalyWatch(AnomalySettings(throttle_rpm=3), store)
        gate, record = AnomalyGate(watch, KeyCache(store)), AnomalyRecord(watch)
        ctx = context("POST", "/v1/chat/completions", key=key_record("key_1"))
        ctx.client_addr = parse_ip("10.5.5.5")
        assert gate.request(ctx) is None and record.request(ctx) is None  # nothing in force
        watch.board.throttle("key_1", time.time() + 60)
        answers = [gate.request(ctx) for _ in range(5)]
        assert answers[:3] == [None, None, None]
        assert answers[3] is not None and answers[3].code == "key_throttled" and answers[3].status == 429
        other = context("POST", "/v1/chat/completions", key=key_record("key_2"))
        assert gate.request(other) is None  # only that key
        assert watch.board.block("10.5.5.9", 24, 64, time.time() + 60) == "10.5.5.0/24"
        refused = record.request(ctx)
        assert refused is not None and refused.code == "network_blocked" and refused.status == 429
        ctx.client_addr = parse_ip("10.5.6.5")
        assert record.request(ctx) is None
        watch.board.expire(time.time() + 120)
        assert watch.board.blocked == {} and watch.board.throttled == {}
    finally:
        store.close()


def test_stuffing_spread_over_a_network_is_reported_for_the_network() -> None:
    analyser = Analyser(AnomalySettings())
    # 5 addresses x 4 distinct keys: under the per-address threshold (8), over the network's (16)
    batch = [
        (
            1000.0 + i,
            None,
            None,
            f"10.8.8.{i % 5 + 1}",
            fingerprint(f"k{i}"),
            "kg_Abcd",
            "-",
            401,
            "invalid_api_key",
            0,
            0,
            1,
        )
        for i in range(20)
    ]
    found = analyser.process(batch, 1030.0)
    stuffing = [e for e in found if e.detector == "credential_stuffing"]
    assert [e.subject for e in stuffing] == ["10.8.8.0/24"]
    assert stuffing[0].evidence["addresses"] == [f"10.8.8.{i}" for i in range(1, 6)]
    prefix = [e for e in found if e.detector == "prefix_failures"]  # one prefix, five addresses
    assert [e.subject for e in prefix] == ["kg_Abcd"] and prefix[0].evidence["count"] == 5
    assert analyser.process(batch, 1031.0) == []  # reported once per window


def test_a_team_surge_is_reported_for_the_team() -> None:
    analyser = Analyser(AnomalySettings(learning_period=3600, min_learning_requests=5))
    found = []
    t = 0.0
    for minute in range(120):  # two keys of one team at a request a minute each, then forty
        per_key = 1 if minute < 110 else 20
        batch = [
            (
                t + i * 60 / per_key,
                k,
                "team_1",
                "10.1.1.5",
                "sdk",
                "gpt-4o-mini",
                "chat.completions",
                200,
                None,
                10,
                5,
                0,
            )
            for k in ("key_a", "key_b")
            for i in range(per_key)
        ]
        t += 60
        found += analyser.process(sorted(batch), t)
    team = [e for e in found if e.detector == "team_surge"]
    assert (
        team and team[0].subject == "team:team_1" and team[0].key_id is None and team[0].team_id == "team_1"
    )
    assert team[0].evidence["observed"] >= 100


def test_a_token_principal_is_quarantined_by_its_id(tmp_path: Path) -> None:
    from keygate.analytics.watch import AnomalyWatch
    from keygate.guards.anomaly import AnomalyGate
    from keygate.keycache import KeyCache
    from keygate.testing import context
    from keygate.types import KeyRecord

    store = SQLiteStore(tmp_path / "j.db", audit_key=b"t" * 32)
    store.migrate()
    try:
        gate = AnomalyGate(AnomalyWatch(AnomalySettings(), store), KeyCache(store))
        principal = KeyRecord(id="jwt:alice", name="alice", key_hash="", hint="jwt", created_at=0.0)
        ctx = context("POST", "/v1/chat/completions", key=principal)
        assert gate.request(ctx) is None
        store.quarantine_key("jwt:alice", 1.0, "anm_1", "many_networks", AUDIT)
        refused = gate.request(ctx)  # no key lookup in between: the gate itself saw the change
        assert refused is not None and refused.code == "key_quarantined" and refused.status == 403
    finally:
        store.close()
