"""What only the PostgreSQL store does: migrations under an advisory lock, revocation by
LISTEN/NOTIFY within 100 ms, the revision poll behind it, and an outage of the database (a
private server of the test's own, stopped and started again)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from keygate.errors import StoreUnavailable
from keygate.store import pg_schema
from keygate.store.postgres import PostgresStore
from keygate.testing import MockUpstream
from keygate.types import AuditRecord, KeyRecord, UsageRow

from .. import postgres as pg
from ..helpers import Gateway

KEY = b"t" * 32  # the audit chain key of stores the tests open themselves

AUDIT = AuditRecord(1.0, "adm_test", "127.0.0.1", "test", "t", "{}")


def key(key_id: str) -> KeyRecord:
    return KeyRecord(key_id, key_id, f"hash-{key_id}", "kg_...abcd", 1.0)


def row(i: int) -> UsageRow:
    return UsageRow(float(i), f"req-{i}", "k1", "chat.completions", "POST", "/v1/chat/completions",
                    "gpt-4o", 200, 1, 2, 0, 1.0, "127.0.0.1", "openai", False)  # fmt: skip


def wait_until(predicate: object, timeout: float) -> float:
    """Seconds until ``predicate()`` was true (raises after ``timeout``)."""
    started = time.perf_counter()
    while not predicate():  # type: ignore[operator]
        if time.perf_counter() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.0005)
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with pg.database() as u:
        yield u


@pytest.fixture
def stores(url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(url, audit_key=KEY), PostgresStore(url, poll_interval=0.2, audit_key=KEY)
    a.migrate()
    pg.truncate(url)
    yield a, b
    a.close()
    b.close()


def test_instances_migrating_one_fresh_database_at_once_take_turns() -> None:
    with pg.database() as fresh:
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def migrate() -> None:
            store = PostgresStore(fresh, audit_key=KEY)
            try:
                start.wait()
                store.migrate()
            except BaseException as exc:
                errors.append(exc)
            finally:
                store.close()

        threads = [threading.Thread(target=migrate) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        names = [r[0] for r in pg.execute(fresh, "SELECT name FROM schema_migrations ORDER BY name")]
        assert sorted(names) == sorted(n for n, _ in pg_schema.PG_MIGRATIONS)
        assert pg.execute(fresh, "SELECT v FROM meta WHERE k = 'keys_rev'") == [("0",)]


def test_a_revoke_reaches_another_instance_within_100_ms(stores: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = stores
    for i in range(10):
        a.insert_key(key(f"k{i}"), AUDIT)
    wait_until(b.keys_changed, 1.0)
    while b.keys_changed():
        pass
    delays = []
    for i in range(10):
        a.revoke_key(f"k{i}", 2.0, AUDIT)
        delays.append(wait_until(b.keys_changed, 1.0))
        record = b.get_key(f"k{i}")
        assert record is not None and record.status == "revoked"
    assert max(delays) < 0.1, delays


def test_a_lost_notification_is_caught_by_the_poll(stores: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = stores  # b polls every 0.2 s
    a.insert_key(key("k1"), AUDIT)
    wait_until(b.keys_changed, 1.0)
    while b.keys_changed():
        pass
    # A change whose NOTIFY never arrives: the revision moves without one.
    pg.execute(a.url, "UPDATE keys SET status = 'revoked' WHERE id = 'k1'")
    pg.execute(a.url, "UPDATE meta SET v = CAST(CAST(v AS INTEGER) + 1 AS TEXT) WHERE k = 'keys_rev'")
    assert wait_until(b.keys_changed, 1.0) < 0.2 + 0.1
    # Upstream changes travel the same way, and the revision is the notification's.
    rev = b.upstreams_rev()
    a.sweep_retired_keys(0.0)  # nothing to sweep: no change
    pg.execute(a.url, "UPDATE meta SET v = '41' WHERE k = 'upstreams_rev'")
    wait_until(lambda: b.upstreams_rev() == "41", 1.0)
    assert rev != "41"


def test_an_outage_fails_writes_fast_keeps_change_checks_quiet_and_heals_itself() -> None:
    with pg.PrivatePostgres() as server:
        store = PostgresStore(server.url, poll_interval=0.2, connect_timeout=1.0, audit_key=KEY)
        try:
            store.migrate()
            store.insert_key(key("k1"), AUDIT)
            assert store.keys_changed() is True
            server.stop()
            # The listener notices; from then on a call fails at once rather than waiting.
            wait_until(lambda: store._listener.down, 3.0)
            started = time.perf_counter()
            for _ in range(100):
                assert store.keys_changed() is False  # never raises into the request path
            with pytest.raises(StoreUnavailable) as failed:
                store.write_usage([row(1)])
            with pytest.raises(StoreUnavailable):
                store.insert_key(key("k2"), AUDIT)
            with pytest.raises(StoreUnavailable):
                store.ping()
            assert time.perf_counter() - started < 0.5
            assert failed.value.status == 503 and "127.0.0.1" not in failed.value.message
            assert store.upstreams_rev() == "0"  # the last one known
            server.start()
            wait_until(lambda: not store._listener.down, 5.0)
            store.write_usage([row(2)])
            store.insert_key(key("k2"), AUDIT)
            assert [k.id for k in store.list_keys()] == ["k1", "k2"]
            assert store.keys_changed() is True
        finally:
            store.close()


def test_a_cli_revoke_reaches_a_gateway_on_postgresql_within_100_ms(
    tmp_path: Path, mock: MockUpstream, pg_url: str, shared_secrets: dict[str, str]
) -> None:
    gw = Gateway(tmp_path, mock.url, extra=pg.on_postgres(pg_url), env=shared_secrets)
    created = gw.create_key("app")
    with gw:
        client = openai.OpenAI(base_url=gw.url, api_key=created["key"], max_retries=0)
        client.models.list()
        gw.cli("keys", "revoke", created["id"])  # another store instance, as on another machine
        revoked_at = time.perf_counter()
        while True:
            try:
                client.models.list()
            except openai.AuthenticationError:
                break
            assert time.perf_counter() - revoked_at < 0.1, "still accepted 100 ms after the revoke"
