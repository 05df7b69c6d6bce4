#!/usr/bin/env python3
"""Compile keygate's hot-path modules with mypyc (keygate.native lists them and explains why).

    python3 scripts/compile.py            # does nothing when the build matches the sources
    python3 scripts/compile.py --force

Builds into src/keygate/_native/ (not tracked by git) and writes its stamp last, so an interrupted
build is never used. Needs mypy (a dev dependency, which carries mypyc) and a C compiler; about a
minute on two cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ["KEYGATE_PURE_PYTHON"] = "1"  # import keygate here without loading a build

from keygate import native  # noqa: E402


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    sources = [str(native.source_path(m).relative_to(ROOT)) for m in native.COMPILED]
    with tempfile.TemporaryDirectory(prefix="keygate-mypyc-") as tmp:
        out = Path(tmp) / "lib"
        os.chdir(ROOT)  # mypy reads its settings from pyproject.toml here
        extensions = mypycify(sources, group_name=native.GROUP, target_dir=str(Path(tmp) / "c"))
        dist = Distribution({"name": "keygate-native", "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(out)  # type: ignore[attr-defined]
        cmd.build_temp = str(Path(tmp) / "o")  # type: ignore[attr-defined]
        cmd.ensure_finalized()
        cmd.run()
        shutil.rmtree(native.BUILD_DIR, ignore_errors=True)
        shutil.copytree(out, native.BUILD_DIR)
    missing = [m for m, path in native.extension_files().items() if not path.is_file()]
    if missing:
        raise SystemExit(f"compile.py: the build did not produce {', '.join(missing)}")
    native.STAMP.write_text(native.digest() + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the build is current")
    args = parser.parse_args()
    if native.stamp_matches() and not args.force:
        print("compile.py: the compiled hot path is up to date")
        return 0
    print(f"compile.py: compiling {len(native.COMPILED)} hot-path modules with mypyc...", flush=True)
    build()
    print(f"compile.py: built into {native.BUILD_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
