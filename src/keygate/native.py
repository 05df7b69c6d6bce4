"""The hot path's compiled modules: used when they were built from exactly these sources.

The modules in :data:`COMPILED` (the guard chain, the rate-limit and budget guards, the in-process
counters) are plain, ``mypy --strict`` Python that ``scripts/compile.py`` also compiles with mypyc
into ``_native/`` beside this file. Compiled, the limits cost about a third less CPU per request
(docs/limits.md#performance).

At import, ``keygate/__init__.py`` calls :func:`activate`: if the build's stamp matches a digest of
the current sources (and this interpreter's ABI), a finder placed first on ``sys.meta_path`` loads
those modules from ``_native/``; otherwise they are imported from their ``.py`` files as usual. An
edited source therefore never runs stale: it runs interpreted until the next compile.
``KEYGATE_PURE_PYTHON=1`` forces the interpreted modules.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR = PACKAGE_DIR / "_native"
STAMP = BUILD_DIR / "stamp"
# mypyc puts the compiled code of every module in one shared library named after the group; each
# module's own extension is a small shim that loads it.
GROUP = "keygate._hot"
COMPILED: tuple[str, ...] = (
    "keygate.chain",
    "keygate.counters.memory",
    "keygate.guards._estimate",
    "keygate.guards.budget",
    "keygate.guards.ratelimit",
    "keygate.limitconf",
)

MODE = "interpreted"
"""``compiled``, or ``interpreted`` with the reason; logged when the server starts."""


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def digest() -> str:
    """What a build is valid for: the compiled sources and the interpreter's extension ABI."""
    h = hashlib.sha256()
    h.update(sys.implementation.cache_tag.encode())
    h.update(importlib.machinery.EXTENSION_SUFFIXES[0].encode())
    for module in COMPILED:
        h.update(module.encode() + b"\0")
        h.update(source_path(module).read_bytes())
    return h.hexdigest()


def extension_path(module: str) -> Path:
    return BUILD_DIR.joinpath(*module.split(".")).with_name(
        module.rsplit(".", 1)[-1] + importlib.machinery.EXTENSION_SUFFIXES[0]
    )


def extension_files() -> dict[str, Path]:
    """Every extension a build must hold: one per compiled module, and the group's shared library."""
    return {m: extension_path(m) for m in (*COMPILED, GROUP + "__mypyc")}


def stamp_matches() -> bool | None:
    """Whether the build's stamp matches the sources as they are now; None when there is no stamp."""
    try:
        stamp = STAMP.read_text().strip()
    except OSError:
        return None
    return stamp == digest()


class _Finder:
    """Finds the compiled modules (and their shared library) in the build directory."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        found = self.files.get(fullname)
        return importlib.util.spec_from_file_location(fullname, found) if found is not None else None


def activate() -> str:
    """Route the :data:`COMPILED` modules to a valid build, if there is one; return :data:`MODE`."""
    global MODE
    if any(m in sys.modules for m in COMPILED):  # too late to choose (imported already)
        return MODE
    if os.environ.get("KEYGATE_PURE_PYTHON", "") not in ("", "0"):
        MODE = "interpreted (KEYGATE_PURE_PYTHON is set)"
        return MODE
    fresh = stamp_matches()
    if fresh is None:
        MODE = "interpreted (not compiled: run scripts/compile.py)"
        return MODE
    files = extension_files()
    if not fresh or not all(f.is_file() for f in files.values()):
        MODE = "interpreted (the compiled modules are out of date: run scripts/compile.py)"
        return MODE
    sys.meta_path.insert(0, _Finder(files))
    MODE = "compiled"
    return MODE
