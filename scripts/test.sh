#!/usr/bin/env bash
# The whole test suite: lint, types, the import layering, a vulnerability check of the locked
# dependencies (skipped when its advisory source is out of reach), bounded fuzzing of the parsers,
# then every test with line coverage (unit and integration tests against real servers on
# loopback; subprocesses are measured too).
# Arguments go to pytest (a subset of tests: then coverage is reported but not enforced).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN_COVERAGE=93.6  # line coverage of src/keygate before the issue-10 redesign (see README)
echo "== ruff"; python3 -m ruff check src tests benchmarks scripts
echo "== ruff format"; python3 -m ruff format --check src tests benchmarks scripts
echo "== mypy (strict, src/)"; python3 -m mypy
echo "== import layers (pyproject.toml [tool.importlinter])"; lint-imports --no-cache | tail -n 4
if [ $# -eq 0 ]; then  # the whole suite (a subset of tests skips these two)
    echo "== known vulnerabilities in the locked dependencies (scripts/audit.sh)"; ./scripts/audit.sh
    echo "== fuzzing, ${FUZZ_SECONDS:-3} s a target (scripts/fuzz.sh)"; ./scripts/fuzz.sh
fi
echo "== pytest, with coverage"
export COVERAGE_FILE="$PWD/.coverage"
rm -f .coverage .coverage.*
# Two workers (pytest-xdist): this machine, and CI's, has two cores; tests take free ports and
# their own temp dirs, so they run side by side. KEYGATE_TEST_WORKERS=0 runs them in one process.
python3 -m coverage run -m pytest -q -p no:cacheprovider -n "${KEYGATE_TEST_WORKERS:-2}" "$@"
python3 -m coverage combine -q
if [ $# -eq 0 ]; then
    python3 -m coverage report --fail-under="$MIN_COVERAGE"
else
    python3 -m coverage report
fi
