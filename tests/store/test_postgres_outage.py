"""A gateway on PostgreSQL while the database goes away under load and comes back (a private
server of the test's own): requests keep being answered from the key cache, no usage row is lost,
admin writes get 503 in OpenAI's error shape, ``/readyz`` says so, and everything heals itself."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import openai

from keygate.testing import MockUpstream

from .. import postgres as pg
from ..helpers import Gateway


def _eventually(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        time.sleep(0.02)


def test_an_outage_under_load_loses_no_usage_row_and_fails_no_request_that_did_not_need_it(
    tmp_path: Path, mock: MockUpstream, shared_secrets: dict[str, str]
) -> None:
    with pg.PrivatePostgres() as server:
        extra = {**pg.on_postgres(server.url), "database_poll_interval": 0.2}
        gw = Gateway(tmp_path, mock.url, extra=extra, env=shared_secrets)
        token = json.loads(gw.cli("admin-tokens", "create", "--role", "admin", "--json").stdout)["token"]
        gw.secrets.append(token)
        key = gw.create_key("app")["key"]
        with gw:
            admin = httpx.Client(base_url=gw.admin_url, headers={"authorization": f"Bearer {token}"})
            assert admin.get("/readyz").json()["checks"]["store"]["ok"] is True
            client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
            stop = threading.Event()
            answered: list[int] = [0]
            failures: list[BaseException] = []

            def load() -> None:
                while not stop.is_set():
                    try:
                        client.models.list()
                        answered[0] += 1
                    except Exception as exc:
                        failures.append(exc)

            threads = [threading.Thread(target=load) for _ in range(2)]
            for t in threads:
                t.start()
            try:
                _eventually(lambda: answered[0] >= 20)
                server.stop()
                at_stop = answered[0]
                _eventually(lambda: admin.get("/readyz").status_code == 503)
                ready = admin.get("/readyz").json()
                assert ready["status"] == "unavailable" and ready["checks"]["store"]["ok"] is False
                refused = admin.post("/admin/keys", json={"name": "later"})
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "store_unavailable"
                _eventually(lambda: answered[0] >= at_stop + 200)  # served while the database is away
                server.start()
                _eventually(lambda: admin.get("/readyz").status_code == 200)
                assert admin.post("/admin/keys", json={"name": "later"}).status_code == 201
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert failures == []
            total = answered[0]
            _eventually(lambda: pg.execute(server.url, "SELECT COUNT(*) FROM usage") == [(total,)])
        logged = [e.get("event") for e in gw.log_entries()]
        assert "database unreachable: serving from the key cache, buffering writes" in logged
        assert "database reachable again: writing what was buffered" in logged
