"""``/readyz`` (``keygate.admin.readiness``): each dependency by name, 503 when one is down, no
token needed and nothing said beyond names and failure kinds; ``/healthz`` stays liveness.
(A real outage of PostgreSQL is in tests/store/test_postgres_outage.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from keygate.admin.api import build_admin_app
from keygate.errors import StoreUnavailable
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream

from ..helpers import Gateway


def test_readyz_on_a_sqlite_gateway_reports_the_store(tmp_path: Path, mock: MockUpstream) -> None:
    with Gateway(tmp_path, mock.url) as gw:
        r = httpx.get(gw.admin_url + "/readyz")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["checks"]["store"]["ok"] is True
        assert set(body["checks"]) == {"store"}
        assert httpx.get(gw.admin_url + "/healthz").json() == {"status": "ok"}


def test_named_checks_plug_in_and_one_down_makes_it_503(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "kg.db", audit_key=b"t" * 32)
    store.migrate()
    from keygate.config import load_settings

    settings = load_settings(None, {})

    def down() -> None:
        raise StoreUnavailable("secret detail: redis://user:pw@cache")

    async def fine_async() -> None:
        await asyncio.sleep(0)

    def slow() -> None:
        time.sleep(2.5)

    async def ask(checks: list[tuple[str, object]]) -> httpx.Response:
        app = build_admin_app(settings, store, checks=checks)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as c:
            return await c.get("/readyz")

    ok = asyncio.run(ask([("counters", lambda: fine_async())]))
    assert ok.status_code == 200 and ok.json()["checks"]["counters"]["ok"] is True
    bad = asyncio.run(ask([("counters", down), ("other", slow)]))
    assert bad.status_code == 503
    checks = bad.json()["checks"]
    assert checks["store"]["ok"] is True
    assert checks["counters"] == {"ok": False, "error": "StoreUnavailable"}
    assert checks["other"] == {"ok": False, "error": "TimeoutError"}
    assert "secret" not in bad.text and "pw" not in bad.text
    store.close()
