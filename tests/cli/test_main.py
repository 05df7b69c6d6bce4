"""The ``keygate`` command itself (``keygate.cli``): the parser, usage errors that never echo a secret,
errors named by the flag that caused them, exit codes, and ``--admin-url`` remote mode (in
process, against a real gateway)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from keygate.cli import _as_flag, build_parser, main
from keygate.cli._remote import segment
from keygate.config import admin_token_from_env
from keygate.testing import MockUpstream

from ..admin.common import Admin
from ..helpers import Gateway, assert_no_secret_written


@pytest.fixture(scope="module")
def admin(upstream: MockUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    with Gateway(tmp_path_factory.mktemp("remote"), upstream.url) as gw:
        yield Admin(gw)


class Answering:
    """An HTTP server answering every request with ``status`` and ``body`` (and ``location``),
    recording what reached it."""

    def __init__(self, status: int, body: bytes = b"", location: str | None = None) -> None:
        self.hits: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.hits.append((self.command, self.path, self.headers.get("authorization")))
                self.send_response(status)
                if location:
                    self.send_header("location", location)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the parser and exit codes ---------------------------------------------------------------------


def test_every_area_registers_its_commands() -> None:
    parser = build_parser()
    for argv in (
        ["serve"], ["init"], ["keys", "list"], ["keys", "due"], ["keys", "rotate", "key_x"],
        ["teams", "list"], ["usage"], ["upstreams", "list"], ["master-key", "status"],
        ["admin-tokens", "list"],
    ):  # fmt: skip
        args = parser.parse_args(argv)
        assert callable(args.handler), argv
    # Options given before or after the command are the same option.
    assert parser.parse_args(["--config", "a.yaml", "usage"]).config == "a.yaml"
    assert parser.parse_args(["usage", "--config", "b.yaml"]).config == "b.yaml"


def test_usage_errors_exit_2_and_never_echo_a_secret(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    secret = "sk-proj-PASTED-by-mistake-0123456789"
    gw.secrets.append(secret)
    for argv in (
        ("keys", "create", "--name", "x", secret),
        ("upstreams", "add", "openai", secret),
        ("keys", "create", "--name", "x", "--rpm", secret),
        ("admin-tokens", "create", "--role", secret),
    ):
        result = gw.cli(*argv, check=False)
        assert result.returncode == 2 and "usage:" in result.stderr, argv
        assert secret not in result.stderr + result.stdout and "sk-***" in result.stderr, argv
    assert gw.cli(check=False).returncode == 2  # no command
    assert gw.cli("nonsense", check=False).returncode == 2
    helped = gw.cli("keys", "--help")
    assert "create" in helped.stdout and "rotate" in helped.stdout
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_policy_errors_are_named_by_their_flag(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    for flags, flag in (
        (("--max-output-tokens", "0"), "--max-output-tokens: "),
        (("--max-body-bytes", str(2**53)), "--max-body-bytes: "),
        (("--rpd", str(2**53)), "--rpd: "),
    ):
        result = gw.cli("keys", "create", "--name", "k", *flags, check=False)
        assert result.returncode == 1 and result.stderr.startswith("keygate: " + flag), result.stderr
        assert "policy." not in result.stderr
        team = gw.cli("teams", "create", "t", *flags, check=False)
        assert team.returncode == 1 and team.stderr.startswith("keygate: " + flag), team.stderr
    assert _as_flag("policy.budget_usd.amount: expected a number") == "--budget-usd.amount: expected a number"
    assert _as_flag("policy.models: expected a list") == "--models: expected a list"
    assert _as_flag("no key with id 'x'") == "no key with id 'x'"
    assert _as_flag("policy must be a JSON object") == "policy must be a JSON object"


def test_configuration_errors_exit_2(tmp_path: Path, upstream: MockUpstream) -> None:
    gw = Gateway(tmp_path, upstream.url)
    gw.write_config({**gw.config, "max_body_bytes": -1})
    result = gw.cli("keys", "list", check=False)
    assert result.returncode == 2 and result.stderr.startswith("keygate: configuration error: max_body_bytes")
    missing = gw.cli("--config", str(tmp_path / "nope.yaml"), "keys", "list", check=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_ctrl_c_at_the_hidden_prompt_exits_130(
    tmp_path: Path, upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = Gateway(
        tmp_path, upstream.url, env={"KEYGATE_MASTER_KEY": "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="}
    )

    class Terminal:
        def isatty(self) -> bool:
            return True

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", interrupted)
    assert main(["--config", str(gw.config_path), "upstreams", "add", "openai"], gw.env) == 130


def test_without_env_main_reads_the_process_environment(
    tmp_path: Path,
    upstream: MockUpstream,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = Gateway(tmp_path, upstream.url)
    made = gw.create_key("from-env")
    monkeypatch.setenv("KEYGATE_CONFIG", str(gw.config_path))
    assert main(["keys", "list", "--json"]) == 0
    assert [k["id"] for k in json.loads(capsys.readouterr().out)] == [made["id"]]


# -- --admin-url: the same commands against a remote admin API -------------------------------------


def test_admin_token_from_env_is_a_secret() -> None:
    assert admin_token_from_env({}) is None and admin_token_from_env({"KEYGATE_ADMIN_TOKEN": " "}) is None
    token = admin_token_from_env({"KEYGATE_ADMIN_TOKEN": "kga_abc"})
    assert token is not None and token.reveal() == "kga_abc" and "kga_abc" not in repr(token) + str(token)


def test_cli_both_ways(admin: Admin) -> None:
    gw = admin.gw
    remote = ("--admin-url", gw.admin_url)
    gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["key-manager"]["token"]
    try:
        team = json.loads(gw.cli("teams", "create", "cli-remote", "--json", *remote).stdout)
        data = json.loads(
            gw.cli("keys", "create", "--name", "remote", "--team", "cli-remote", "--json", *remote).stdout
        )
        gw.secrets.append(data["key"])
        assert data["key"].startswith("kg_") and data["team_id"] == team["id"]
        plain = gw.cli("keys", "create", "--name", "remote-plain", *remote)
        assert "kg_" in plain.stdout and "cannot show it again" in plain.stderr
        gw.secrets.extend(w for w in plain.stdout.split() if w.startswith("kg_"))
        # Both ways see the same records.
        local = json.loads(gw.cli("keys", "list", "--json").stdout)
        over_http = json.loads(gw.cli("keys", "list", "--json", *remote).stdout)
        assert local == over_http and data["id"] in {k["id"] for k in local}
        assert gw.cli("keys", "list", *remote).stdout == gw.cli("keys", "list").stdout
        updated = json.loads(
            gw.cli("keys", "update", data["id"], "--name", "renamed", "--team", "", "--json", *remote).stdout
        )
        assert updated["name"] == "renamed" and updated["team_id"] is None
        assert "Revoked" in gw.cli("keys", "revoke", data["id"], *remote).stdout
        assert "already revoked" in gw.cli("keys", "revoke", data["id"], *remote).stdout
        assert json.loads(gw.cli("teams", "list", "--json", *remote).stdout) == json.loads(
            gw.cli("teams", "list", "--json").stdout
        )
        assert (
            json.loads(gw.cli("teams", "update", "cli-remote", "--json", *remote).stdout)["id"] == team["id"]
        )
        missing = gw.cli("keys", "revoke", "key_nope", *remote, check=False)
        assert missing.returncode == 1 and "no key" in missing.stderr
        # The key-manager may not read usage; the auditor may, and sees what the local CLI sees.
        denied = gw.cli("usage", *remote, check=False)
        assert denied.returncode == 1 and "may not" in denied.stderr
        gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["auditor"]["token"]
        assert json.loads(gw.cli("usage", "--json", *remote).stdout) == json.loads(
            gw.cli("usage", "--json").stdout
        )
        # The remote actions are audited under the token that did them, not the CLI user.
        audit = json.loads(
            httpx.get(
                f"{gw.admin_url}/admin/audit",
                headers={"Authorization": f"Bearer {admin.tokens['auditor']['token']}"},
            ).text
        )
        assert {e["actor"] for e in audit if e["target"] == data["id"]} == {admin.tokens["key-manager"]["id"]}
        gw.env["KEYGATE_ADMIN_TOKEN"] = "kga_" + "B" * 38
        bad = gw.cli("keys", "list", *remote, check=False)
        assert bad.returncode == 1 and "Invalid or revoked admin token" in bad.stderr
        del gw.env["KEYGATE_ADMIN_TOKEN"]
        none = gw.cli("keys", "list", *remote, check=False)
        assert none.returncode == 2 and "KEYGATE_ADMIN_TOKEN" in none.stderr
        gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["admin"]["token"]
        insecure = gw.cli("keys", "list", "--admin-url", "http://admin.example.com:8081", check=False)
        assert insecure.returncode == 2 and "https is required" in insecure.stderr
    finally:
        gw.env.pop("KEYGATE_ADMIN_TOKEN", None)


def test_remote_ids_cannot_change_the_path(admin: Admin) -> None:
    gw = admin.gw
    gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["admin"]["token"]
    try:
        assert segment("../teams") == "..%2Fteams" and segment("a b?c#d") == "a%20b%3Fc%23d"
        for key_id in ("../teams", "..%2Fteams", "x/../../admin/tokens", "?limit=5"):
            result = gw.cli("keys", "update", key_id, "--name", "x", "--admin-url", gw.admin_url, check=False)
            assert result.returncode == 1, key_id
            assert "Not found" in result.stderr or "no key with id" in result.stderr, key_id
        teams = gw.cli("teams", "update", "../keys", "--rpm", "5", "--admin-url", gw.admin_url, check=False)
        assert teams.returncode == 1
    finally:
        del gw.env["KEYGATE_ADMIN_TOKEN"]


def test_remote_errors_keep_their_kind(admin: Admin) -> None:
    gw = admin.gw
    remote = ("--admin-url", gw.admin_url)
    gw.env["KEYGATE_ADMIN_TOKEN"] = admin.tokens["admin"]["token"]
    try:
        gw.cli("teams", "create", "twice", *remote)
        dup = gw.cli("teams", "create", "twice", *remote, check=False)
        assert dup.returncode == 1 and "exists already" in dup.stderr
        bad = gw.cli("keys", "create", "--name", "k", "--max-output-tokens", "0", *remote, check=False)
        assert bad.returncode == 1 and bad.stderr.startswith("keygate: --max-output-tokens: ")
        made = json.loads(gw.cli("keys", "create", "--name", "same", "--json", *remote).stdout)
        gw.secrets.append(made["key"])
        unchanged = json.loads(gw.cli("keys", "update", made["id"], "--json", *remote).stdout)
        assert unchanged == {k: v for k, v in made.items() if k != "key"}
        text = gw.cli("keys", "update", made["id"], "--upstream", "openai", *remote).stdout
        assert text.startswith(f"Updated {made['id']}: policy -, upstream openai")
    finally:
        del gw.env["KEYGATE_ADMIN_TOKEN"]


def test_an_unreachable_or_odd_admin_api_is_an_error_not_a_crash(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    gw = Gateway(tmp_path, upstream.url, env={"KEYGATE_ADMIN_TOKEN": "kga_" + "E" * 38})
    gw.secrets.append("kga_" + "E" * 38)
    down = Answering(200)
    url = down.url
    down.close()
    gone = gw.cli("keys", "list", "--admin-url", url, check=False)
    assert gone.returncode == 1 and "cannot reach the admin API: ConnectError" in gone.stderr
    teapot = Answering(418, b"<html>I am a teapot</html>")
    try:
        odd = gw.cli("keys", "list", "--admin-url", teapot.url, check=False)
        assert odd.returncode == 1 and "the admin API answered 418" in odd.stderr
    finally:
        teapot.close()
    assert_no_secret_written(gw.written_files(), gw.secrets)


def test_remote_mode_follows_no_redirect_and_fails_cleanly(tmp_path: Path, upstream: MockUpstream) -> None:
    """A redirect would carry the admin token to another host: it is not followed, and the CLI
    says what it got instead of crashing on a body that is not the API's JSON."""
    token = "kga_" + "F" * 38
    gw = Gateway(tmp_path, upstream.url, env={"KEYGATE_ADMIN_TOKEN": token})
    gw.secrets.append(token)
    target = Answering(200, b"[]")
    redirector = Answering(302, location=target.url + "/admin/keys")
    html = Answering(200, b"<html>a login page</html>")
    try:
        for server in (redirector, html):
            result = gw.cli("keys", "list", "--admin-url", server.url, check=False)
            assert [(m, p) for m, p, _ in server.hits] == [("GET", "/admin/keys")]
            assert server.hits[0][2] == f"Bearer {token}"
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert target.hits == []
    finally:
        for server in (target, redirector, html):
            server.close()


def test_admin_url_is_never_silently_ignored(admin: Admin, tmp_path: Path) -> None:
    """Commands that have no admin-API endpoint must not quietly answer from (or create) a local
    database when --admin-url names a remote gateway: they either ask the remote one or refuse."""
    gw = admin.gw
    due = gw.create_key("due-soon", "--rotate-every", "1d")
    local = Gateway(
        tmp_path, "http://127.0.0.1:9/v1", env={"KEYGATE_ADMIN_TOKEN": admin.tokens["admin"]["token"]}
    )
    for argv in (("keys", "due", "--json"), ("usage", "--budgets", "--json"), ("keys", "rotate", due["id"])):
        result = local.cli(*argv, "--admin-url", gw.admin_url, check=False)
        remote_answer = result.returncode == 0 and due["id"] in result.stdout
        refused = result.returncode != 0 and "--admin-url" in result.stderr
        assert remote_answer or refused, (argv, result.returncode, result.stdout, result.stderr)
        assert not (tmp_path / "keygate.db").exists(), argv
