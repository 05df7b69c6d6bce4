#!/usr/bin/env bash
# The whole test suite: lint, types, then every test (unit and integration, real servers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"; python3 -m ruff check src tests benchmarks
echo "== ruff format"; python3 -m ruff format --check src tests benchmarks
echo "== mypy (strict, src/)"; python3 -m mypy
echo "== pytest"; python3 -m pytest -q -p no:cacheprovider "$@"
