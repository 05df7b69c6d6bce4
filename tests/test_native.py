"""The compiled hot path (keygate.native): used when built from these sources, never when stale."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

import keygate.guards.budget
from keygate import native
from keygate.testing import MockUpstream

from .helpers import SRC, Gateway

PURE = os.environ.get("KEYGATE_PURE_PYTHON", "") not in ("", "0")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_the_gateway_runs_the_hot_path_it_reports(tmp_path: Path, mock: MockUpstream) -> None:
    # scripts/test.sh compiles before the tests, and runs the limit tests again with
    # KEYGATE_PURE_PYTHON=1: each run checks that it runs what it meant to.
    if PURE:
        assert native.MODE.startswith("interpreted (KEYGATE_PURE_PYTHON")
        assert keygate.guards.budget.__file__.endswith(".py")
    else:
        assert native.MODE == "compiled"
        assert keygate.guards.budget.__file__.endswith(SUFFIX)
    with Gateway(tmp_path, mock.url) as gw:
        client = openai.OpenAI(base_url=gw.url, api_key=gw.create_key()["key"], max_retries=0)
        assert client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    started = [json.loads(line) for line in gw.stderr_path.read_text().splitlines() if "listening" in line]
    assert started and started[0]["hot_path"] == native.MODE


def _mode_of_copy(root: Path) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KEYGATE_PURE_PYTHON"}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import keygate.native as n, keygate.guards.budget as b, keygate.chain as c; "
            "print(n.MODE); print(b.__file__); c.Guard()",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    mode, budget_file = out.stdout.splitlines()
    return mode, budget_file


@pytest.mark.skipif(PURE and not native.STAMP.exists(), reason="KEYGATE_PURE_PYTHON=1 and never compiled")
def test_an_edited_source_runs_interpreted_until_compiled_again(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(Path(SRC) / "keygate", copy / "keygate", ignore=shutil.ignore_patterns("__pycache__"))
    mode, budget_file = _mode_of_copy(copy)
    assert mode == "compiled" and budget_file.endswith(SUFFIX)

    edited = copy / "keygate" / "guards" / "budget.py"
    edited.write_text(edited.read_text() + "\n# edited after the build\n")
    mode, budget_file = _mode_of_copy(copy)
    assert "out of date" in mode and budget_file == str(edited)

    shutil.rmtree(copy / "keygate" / "_native")
    mode, budget_file = _mode_of_copy(copy)
    assert "not compiled" in mode and budget_file == str(edited)
