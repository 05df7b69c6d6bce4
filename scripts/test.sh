#!/usr/bin/env bash
# The whole test suite: lint, types, then every test (unit and integration, real servers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; python3 -m ruff check src tests benchmarks scripts
echo "== ruff format"; python3 -m ruff format --check src tests benchmarks scripts
echo "== mypy (strict, src/)"; python3 -m mypy
if [ "${KEYGATE_PURE_PYTHON:-0}" = "0" ]; then
    # The tests run what ships: the hot path compiled from these sources (a no-op when it is).
    echo "== mypyc (hot path)"; python3 scripts/compile.py
fi
echo "== pytest"; python3 -m pytest -q -p no:cacheprovider "$@"
if [ $# -eq 0 ] && [ "${KEYGATE_PURE_PYTHON:-0}" = "0" ]; then
    # The same modules interpreted, as they run before a compile or with KEYGATE_PURE_PYTHON=1.
    echo "== pytest, hot path interpreted"
    KEYGATE_PURE_PYTHON=1 python3 -m pytest -q -p no:cacheprovider tests/test_chain_phases.py \
        tests/test_limits_unit.py tests/test_limits_async.py tests/test_limits_fastpath.py \
        tests/test_limits_more.py tests/integration/test_limits.py tests/integration/test_budgets.py \
        tests/test_native.py
fi
