#!/usr/bin/env bash
# One command to set up a fresh machine for developing and testing keygate.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet -e '.[dev]'
# The hot path's modules compiled with mypyc (keygate/native.py); KEYGATE_PURE_PYTHON=1 skips it.
if [ "${KEYGATE_PURE_PYTHON:-0}" = "0" ]; then
    python3 scripts/compile.py > /dev/null
fi
echo "keygate $(python3 -c 'import keygate; print(keygate.__version__)') installed" \
    "(hot path: $(python3 -c 'import keygate.native as n; print(n.MODE)')); run ./scripts/test.sh"
