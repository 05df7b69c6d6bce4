"""The admin API's OpenAPI document (``keygate.admin.openapi``): schemathesis against the running
API, authenticated as an admin; and the document against the routes and checks it describes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from schemathesis.checks import positive_data_acceptance

from keygate.admin.api import AdminAPI
from keygate.admin.openapi import openapi_document
from keygate.config import load_settings
from keygate.errors import InvalidRequest
from keygate.metrics import Metrics
from keygate.ops.validate import NAME_MAX, check_name
from keygate.store import SQLiteStore
from keygate.testing import MockUpstream

from ..helpers import Gateway

_TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def admin_gateway(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("openapi"), upstream.url) as gw:
        _TOKEN["token"] = json.loads(gw.cli("init", "--json").stdout)["token"]
        gw.cli("teams", "create", "research")
        yield gw


@pytest.fixture(scope="module")
def admin_schema(admin_gateway: Gateway) -> Any:
    headers = {"Authorization": f"Bearer {_TOKEN['token']}"}
    document = httpx.get(f"{admin_gateway.admin_url}/openapi.json", headers=headers).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=admin_gateway.admin_url)
    return schema


schema = schemathesis.pytest.from_fixture("admin_schema")


@schema.parametrize()
# derandomize: the same examples every run, so CI is reproducible; raise max_examples to fuzz harder.
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_response_matches_the_schema(case: Any) -> None:
    # Every check but "schema-valid data is accepted": a policy's values are validated beyond what
    # JSON Schema expresses (CIDR networks, real calendar dates, known routes, budget syntax), so
    # an arbitrary object that fits the schema is rightly refused with a 400. Negative data must
    # still be rejected, and every response must match the schema with no 500s.
    # A query value of None or [] is dropped by the HTTP client, so such a "negative" case is sent
    # as a valid request: not an example of anything, so it is rejected (hypothesis draws another).
    assume(all(v is not None and v != [] for v in (case.query or {}).values()))
    case.call_and_validate(
        headers={"Authorization": f"Bearer {_TOKEN['token']}"},
        excluded_checks=[positive_data_acceptance],
    )


def test_openapi_document_needs_a_token(admin_gateway: Gateway) -> None:
    r = httpx.get(f"{admin_gateway.admin_url}/openapi.json")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_admin_token"


def test_the_fuzzer_really_reached_the_api(admin_gateway: Gateway) -> None:
    """Runs after the schemathesis test: its writes are in the audit trail, under the token's id."""
    headers = {"Authorization": f"Bearer {_TOKEN['token']}"}
    entries = httpx.get(f"{admin_gateway.admin_url}/admin/audit?limit=1000", headers=headers).json()
    actions = {e["action"] for e in entries}
    assert {"keys.create", "teams.create"} <= actions
    assert all(e["origin"] == "127.0.0.1" for e in entries if e["actor"].startswith("adm_"))


def test_the_document_describes_every_route_and_only_those(tmp_path: Path) -> None:
    settings = load_settings(None, {"KEYGATE_DATABASE_URL": f"sqlite:///{tmp_path}/k.db"})
    served = {
        (route.path, method.lower())
        for route in AdminAPI(
            settings, SQLiteStore(tmp_path / "k.db", audit_key=b"t" * 32), metrics=Metrics(settings)
        ).routes()
        for method in route.methods or ()
        if method != "HEAD"
    }
    document = openapi_document()
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served - documented == {("/openapi.json", "get")}  # the document itself
    assert documented <= served
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', json.dumps(document)))
    assert refs == set(document["components"]["schemas"])


@pytest.mark.parametrize(
    "name",
    ["ok", " padded ", "naïve café", "x" * NAME_MAX, "", "   ", "x" * (NAME_MAX + 1), "tab\there",
     "new\nline", "del\x7f", "c1\x85", "sep\u2028", "par\u2029", "nul\x00"],
)  # fmt: skip
def test_the_name_schema_agrees_with_check_name(name: str) -> None:
    schema = openapi_document()["components"]["schemas"]["KeyCreate"]["properties"]["name"]
    fits = schema["minLength"] <= len(name) <= schema["maxLength"] and bool(re.match(schema["pattern"], name))
    try:
        check_name(name)
        accepted = True
    except InvalidRequest:
        accepted = False
    assert fits == accepted
