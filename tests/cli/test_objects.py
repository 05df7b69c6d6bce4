"""``keygate objects`` (``keygate.cli.objects``) and its admin-API routes: list, assign and unassign
ownership records, audited, with the data plane following at once."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

from openai import NotFoundError, OpenAI

from keygate.testing import MockUpstream

from ..admin.common import Admin, assert_openai_error
from ..helpers import UPSTREAM_SECRET, Gateway


def _audit(path: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(path / "keygate.db") as db:
        rows = db.execute("SELECT actor, action, target, details FROM audit WHERE action LIKE 'objects.%'")
        return [tuple(r) for r in rows.fetchall()]  # type: ignore[misc]


def test_assign_and_unassign_from_the_cli(tmp_path: Path, mock: MockUpstream) -> None:
    direct = OpenAI(base_url=mock.url, api_key=UPSTREAM_SECRET, max_retries=0)
    outside = direct.files.create(file=("o.txt", io.BytesIO(b"o")), purpose="user_data")
    with Gateway(tmp_path, mock.url) as gw:
        key = gw.create_key("a")
        sdk = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        try:
            sdk.files.retrieve(outside.id)
            raise AssertionError("an unassigned object was served")
        except NotFoundError:
            pass
        out = gw.cli("objects", "assign", outside.id, "--key", key["id"])
        assert out.stdout.strip() == f"Assigned {outside.id} to {key['id']}."
        assert sdk.files.retrieve(outside.id).id == outside.id  # the running gateway follows at once
        (row,) = json.loads(gw.cli("objects", "list", "--json", "--key", key["id"]).stdout)
        assert row["id"] == outside.id and row["kind"] == "file" and row["key_id"] == key["id"]
        assert outside.id in gw.cli("objects", "list").stdout
        gw.cli("objects", "unassign", outside.id)
        try:
            sdk.files.retrieve(outside.id)
            raise AssertionError("an unassigned object was served")
        except NotFoundError:
            pass
        assert json.loads(gw.cli("objects", "list", "--json").stdout) == []
        bad = gw.cli("objects", "assign", "notanid", "--key", key["id"], check=False)
        assert bad.returncode == 1 and "not an id of a stored object" in bad.stderr
        missing = gw.cli("objects", "assign", "file-x", "--key", "key_nobody", check=False)
        assert missing.returncode == 1 and "no key" in missing.stderr
        again = gw.cli("objects", "unassign", outside.id, check=False)
        assert again.returncode == 1
    audit = _audit(tmp_path)
    assert [a[1] for a in audit] == ["objects.assign", "objects.unassign"]
    assert all(a[0].startswith("cli:") and a[2] == outside.id for a in audit)
    assert json.loads(audit[0][3])["key_id"] == key["id"] and json.loads(audit[1][3])["previous"] == key["id"]


def test_the_admin_api(tmp_path: Path, mock: MockUpstream) -> None:
    with Gateway(tmp_path, mock.url) as gw:
        admin = Admin(gw)
        key = gw.create_key("a")
        other = gw.create_key("b")
        sdk = OpenAI(base_url=gw.url, api_key=key["key"], max_retries=0)
        made = sdk.files.create(file=("a.txt", io.BytesIO(b"a")), purpose="user_data")
        with admin.client() as http:
            listed = http.get("/admin/objects", params={"key": key["id"]}).json()
            assert [o["id"] for o in listed] == [made.id]  # recorded by the data plane
            moved = http.post(f"/admin/objects/{made.id}/assign", json={"key_id": other["id"]})
            assert moved.status_code == 200 and moved.json()["key_id"] == other["id"]
            assert_openai_error(http.post(f"/admin/objects/{made.id}/assign", json={"key": 1}), 400)
            assert_openai_error(http.get("/admin/objects", params={"kind": "nope"}), 400)
        try:
            sdk.files.retrieve(made.id)
            raise AssertionError("a reassigned object was served to its former owner")
        except NotFoundError:
            pass
        theirs = OpenAI(base_url=gw.url, api_key=other["key"], max_retries=0)
        assert theirs.files.retrieve(made.id).id == made.id
        with admin.client("auditor") as http:
            assert http.get("/admin/objects").status_code == 200
            assert_openai_error(http.post(f"/admin/objects/{made.id}/unassign"), 403)
        with admin.client("key-manager") as http:
            gone = http.post(f"/admin/objects/{made.id}/unassign")
            assert gone.status_code == 200 and gone.json()["previous_key_id"] == other["id"]
        # the CLI's remote mode goes through the same routes
        gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["admin"]["token"]
        remote = gw.cli("objects", "assign", made.id, "--key", key["id"], "--admin-url", gw.admin_url)
        assert remote.stdout.strip() == f"Assigned {made.id} to {key['id']}."
        assert sdk.files.retrieve(made.id).id == made.id
    audit = _audit(tmp_path)
    assert [a[1] for a in audit] == ["objects.assign", "objects.unassign", "objects.assign"]
    assert audit[0][0].startswith("adm_")
