"""Find nginx and wrk, installing them with setup.sh (Debian packages) when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.procs import HarnessError

SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "setup.sh"
# nginx lives in sbin, which is not on every user's PATH.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


@dataclass(frozen=True)
class Tools:
    nginx: str
    wrk: str

    def versions(self) -> dict[str, str]:
        return {"nginx": _version([self.nginx, "-v"]), "wrk": _version([self.wrk, "--version"])}


def _find() -> Tools | None:
    nginx = shutil.which("nginx", path=_SEARCH_PATH)
    wrk = shutil.which("wrk", path=_SEARCH_PATH)
    return Tools(nginx, wrk) if nginx and wrk else None


def ensure_tools() -> Tools:
    """Return the tool paths, running setup.sh once if either tool is missing."""
    tools = _find()
    if tools is not None:
        return tools
    print(f"nginx or wrk missing; running {SETUP_SCRIPT}", flush=True)
    result = subprocess.run(["sh", str(SETUP_SCRIPT)], check=False)
    tools = _find()
    if result.returncode != 0 or tools is None:
        raise HarnessError(f"could not install nginx and wrk (see output of {SETUP_SCRIPT} above)")
    return tools


def _version(cmd: list[str]) -> str:
    # nginx prints its version on stderr, wrk prints it first on stdout and exits non-zero.
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = (out.stdout + out.stderr).strip()
    first_line = text.splitlines()[0] if text else "unknown"
    return first_line.removeprefix("nginx version: ").split(" [")[0]
