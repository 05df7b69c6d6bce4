"""``keygate serve`` as a process of its own (``keygate.cli.serve``): what it prints on stdout and
writes anywhere else never holds a secret, whatever the traffic."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from keygate.testing import MockUpstream

from ..helpers import UPSTREAM_SECRET, ProcessGateway, assert_no_secret_written


def test_no_secret_is_written_anywhere(tmp_path: Path, upstream: MockUpstream, mock: MockUpstream) -> None:
    """Traffic with known secrets, including failures that echo them; then grep every file."""
    gw = ProcessGateway(tmp_path, upstream.url, extra={"access_log": "-"})
    with gw:
        key = gw.create_key("leaky")["key"]
        client = openai.OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        for _ in client.chat.completions.create(model="gpt-4o", messages=[], stream=True):
            pass
        mock.fail_next("401")
        r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 502 and UPSTREAM_SECRET not in r.text and key not in r.text
        mock.fail_next("500")
        httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {key}"})
        # Wrong keys of every shape: they must not be logged either.
        wrong = ["kg_" + "Z" * 38, "sk-proj-wrongWRONGwrong123456", "not-a-key-at-all-9f8e7d6c5b4a"]
        gw.secrets.extend(wrong)
        for w in wrong:
            r = httpx.get(f"{gw.url}/models", headers={"Authorization": f"Bearer {w}"})
            assert r.status_code == 401 and w not in r.text
        httpx.get(f"{gw.base}/{key}", headers={"Authorization": f"Bearer {key}"})
        httpx.post(
            f"{gw.url}/chat/completions",
            content=b"{" + key.encode(),
            headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        )
        gw.cli("keys", "list")
        gw.cli("usage")
    pepper = (tmp_path / "keygate.pepper").read_text().strip()
    written = [p for p in gw.written_files() if p.name != "keygate.pepper"]
    assert any(p.name == "stdout.log" and p.stat().st_size > 0 for p in written)
    assert any(p.name == "keygate.db" for p in written)
    assert_no_secret_written(written, [*gw.secrets, pepper])


def test_serve_and_the_cli_refuse_a_networked_database_without_the_shared_secrets(
    tmp_path: Path, upstream: MockUpstream, pg_url: str
) -> None:
    from ..helpers import Gateway, process_cli

    gw = Gateway(tmp_path, upstream.url, extra={"database_url": pg_url})
    # `serve` as a process of its own: in process it would configure this process's logging.
    for refused in (process_cli(gw, "serve"), gw.cli("keys", "list", check=False)):
        assert refused.returncode == 2, refused.args
        assert "pepper: with a networked database (postgresql://)" in refused.stderr
        assert "KEYGATE_PEPPER" in refused.stderr
    assert not (tmp_path / "keygate.pepper").exists()
    # The schema (and a copy, `migrate --from`) needs neither: hashes and sealed keys move as stored.
    assert "up to date" in gw.cli("migrate").stdout
    gw.env["KEYGATE_PEPPER"] = "p" * 43
    refused = gw.cli("keys", "list", check=False)
    assert refused.returncode == 2 and "master_key: with a networked database" in refused.stderr
