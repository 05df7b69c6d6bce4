#!/usr/bin/env bash
# One command to set up a fresh machine for developing and testing keygate: every dependency,
# runtime and development, from the hash-pinned lock (requirements/dev.lock, made by
# scripts/lock.sh), so each file installed is the one reviewed; then keygate itself, editable,
# with no dependency resolution of its own and the build backend from the same lock.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --require-hashes --only-binary :all: -r requirements/dev.lock
python3 -m pip install --quiet --no-deps --no-build-isolation -e .
echo "keygate $(python3 -c 'import keygate; print(keygate.__version__)') installed; run ./scripts/test.sh"
