"""The lock files (``requirements/*.lock``, made by ``scripts/lock.sh``) against ``pyproject.toml``:
every dependency, runtime and development, is pinned to a release its range allows, with hashes,
so a dependency added to pyproject.toml without re-locking fails here rather than at install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# The platform the locks are made for (scripts/lock.sh): CPython 3.11 on Linux x86_64.
TARGET = {
    **default_environment(),
    "sys_platform": "linux",
    "platform_machine": "x86_64",
    "python_version": "3.11",
}


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """Each package of a lock file: its pinned version and how many hashes it carries."""
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)", block)
        if m:
            found[canonicalize_name(m.group(1))] = (m.group(2), block.count("--hash=sha256:"))
    return found


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    if extras:  # the dev lock also pins the installers (requirements/lock.in)
        text = (ROOT / "requirements" / "lock.in").read_text().splitlines()
        lines += [line for line in text if line.strip() and not line.startswith("#")]
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.lock", ()), ("dev.lock", ("dev",))])
def test_every_dependency_is_locked_within_its_range_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    locked = pins(ROOT / "requirements" / lock)
    for req in declared(*extras):
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in requirements/{lock}: run scripts/lock.sh"
        version, _ = locked[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {req.name}=={version}, outside {req.specifier}: run scripts/lock.sh"
        )
    assert all(hashes > 0 for _, hashes in locked.values())
    runtime = set(pins(ROOT / "requirements" / "runtime.lock"))
    assert runtime <= set(locked)  # the dev lock holds everything the runtime lock does


def test_setup_installs_only_from_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if "pip install" in line]
    assert installs[0].split("pip install", 1)[1].split() == [
        "--quiet",
        "--require-hashes",
        "--only-binary",
        ":all:",
        "-r",
        "requirements/dev.lock",
    ]
    assert all("--no-deps" in line for line in installs[1:])
