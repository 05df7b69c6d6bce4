#!/usr/bin/env bash
# One command to set up a fresh machine for developing and testing keygate.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet -e '.[dev]'
echo "keygate $(python3 -c 'import keygate; print(keygate.__version__)') installed; run ./scripts/test.sh"
