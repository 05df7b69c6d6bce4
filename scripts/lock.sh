#!/usr/bin/env bash
# Regenerate the hash-pinned lock files from pyproject.toml (and requirements/lock.in):
#   requirements/runtime.lock  what `keygate` needs to run (for deployments)
#   requirements/dev.lock      that, the `dev` extra and the build tools: what scripts/setup.sh installs
# Pinned for CPython 3.11 on Linux x86_64 (the machines the project runs and is tested on).
# Existing pins are kept unless a range in pyproject.toml excludes them; to move them on:
#   scripts/lock.sh --upgrade                 every package to its newest allowed release
#   scripts/lock.sh --upgrade-package orjson  one package
# Needs uv (in the dev extra); resolves against the default package index, never a local one.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=(python3 -m uv)
"${uv[@]}" --version >/dev/null 2>&1 || { echo "lock.sh: uv is missing: python3 -m pip install uv" >&2; exit 1; }
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --no-config --quiet --custom-compile-command scripts/lock.sh "$@")
# Each lock is written to a temporary file first, so a failed resolution leaves the old one.
lock() {
    local out=$1; shift
    local tmp; tmp=$(mktemp)
    [ -f "$out" ] && cp "$out" "$tmp"  # the existing pins are uv's preferences
    "${uv[@]}" pip compile "$@" "${common[@]}" -o "$tmp"
    mv "$tmp" "$out"
    echo "$out: $(grep -c '^[A-Za-z0-9]' "$out") packages"
}
lock requirements/runtime.lock pyproject.toml
lock requirements/dev.lock pyproject.toml requirements/lock.in --extra dev
