"""Schemathesis against the admin API's own OpenAPI document, authenticated as an admin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from keygate.testing import MockUpstream

from ..helpers import Gateway

_TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def admin_gateway(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with Gateway(tmp_path_factory.mktemp("openapi"), upstream.url) as gw:
        pass
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
