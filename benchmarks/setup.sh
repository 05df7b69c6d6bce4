#!/bin/sh
# Install the load tools the benchmarks need (nginx as the mock upstream, wrk as the load generator,
# valgrind for instructions.py) from Debian packages. Does nothing when both are already installed.
set -eu

PATH="$PATH:/usr/sbin:/usr/local/sbin:/sbin"

if command -v nginx >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 && command -v valgrind >/dev/null 2>&1; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# nginx-light is the small build; newer Debian releases dropped it, so fall back to plain nginx.
$SUDO apt-get install -y nginx-light wrk valgrind || $SUDO apt-get install -y nginx wrk valgrind
