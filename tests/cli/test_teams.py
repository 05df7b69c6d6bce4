"""``keygate teams`` (``keygate.cli.teams``): groups of keys sharing a policy; create, list, update."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from keygate.testing import MockUpstream

from ..helpers import Gateway


def test_teams_and_key_updates(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    team = json.loads(gw.cli("teams", "create", "research", "--json").stdout)
    assert team["id"].startswith("team_") and team["name"] == "research"
    dup = gw.cli("teams", "create", "research", check=False)
    assert dup.returncode == 1 and "exists" in dup.stderr
    key = gw.create_key("notebook", "--team", "research")
    assert key["team_id"] == team["id"]
    updated = json.loads(
        gw.cli("keys", "update", key["id"], "--name", "laptop", "--team", "", "--json").stdout
    )
    assert updated["name"] == "laptop" and updated["team_id"] is None
    assert gw.cli("keys", "update", "key_missing", "--name", "x", check=False).returncode == 1
    assert [t["name"] for t in json.loads(gw.cli("teams", "list", "--json").stdout)] == ["research"]
    audit = (
        sqlite3.connect(tmp_path / "keygate.db")
        .execute("SELECT actor, action, target, origin FROM audit")
        .fetchall()
    )
    assert [a[1] for a in audit] == ["teams.create", "keys.create", "keys.update"]
    assert all(a[0].startswith("cli:") and a[3].startswith("cli@") for a in audit)


def test_team_policy_flags_list_and_update(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    made = gw.cli(
        "teams", "create", "ops", "--allow-model", "gpt-4o-mini", "--rpm", "30", "--budget-usd", "10/week"
    )
    assert made.stdout.startswith("Created team team_") and "(ops)" in made.stdout
    (team,) = json.loads(gw.cli("teams", "list", "--json").stdout)
    assert team["policy"] == {
        "models": ["gpt-4o-mini"],
        "rpm": 30,
        "budget_usd": {"amount": 10.0, "period": "week"},
    }
    table = gw.cli("teams", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED", "POLICY"] and "rpm=30" in table[1]
    # An update changes only what its flags name, by team name or id.
    text = gw.cli("teams", "update", "ops", "--clear", "models", "--rpm", "0", "--tpm", "500").stdout
    assert text.startswith(f"Updated {team['id']}: policy ") and "tpm=500" in text and "rpm=30" not in text
    by_id = json.loads(gw.cli("teams", "update", team["id"], "--budget-usd", "none", "--json").stdout)
    assert by_id["policy"] == {"tpm": 500}
    missing = gw.cli("teams", "update", "nobody", "--rpm", "1", check=False)
    assert missing.returncode == 1 and "no team with id or name 'nobody'" in missing.stderr
    for name in ("", "   ", "line\nbreak", "x" * 201):
        bad = gw.cli("teams", "create", name, check=False)
        assert bad.returncode == 1 and "name must be non-blank text" in bad.stderr, repr(name)
    assert len(json.loads(gw.cli("teams", "list", "--json").stdout)) == 1


def test_teams_list_shows_an_older_row_with_control_characters_on_one_line(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    gw = Gateway(tmp_path, upstream.url)
    refused = gw.cli("teams", "create", "a\x1b]0;title\x07", check=False)
    assert refused.returncode == 1 and "control characters" in refused.stderr
    team = json.loads(gw.cli("teams", "create", "research", "--json").stdout)
    db = sqlite3.connect(tmp_path / "keygate.db")
    with db:  # as an older version, which took such names, could have stored it
        db.execute("UPDATE teams SET name = ? WHERE id = ?", ("r\nteam_forged  x\x1b[8m", team["id"]))
    db.close()
    lines = gw.cli("teams", "list").stdout.splitlines()
    assert len(lines) == 2 and lines[1].split()[0] == team["id"]
    assert "r\\x0ateam_forged  x\\x1b[8m" in lines[1] and "\x1b" not in lines[1]
