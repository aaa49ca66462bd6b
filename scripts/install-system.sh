#!/usr/bin/env bash
# System packages the tests need and pip cannot provide: Prometheus and promtool (Debian's
# `prometheus` package), used by tests/test_deploy_live.py. Called by scripts/test.sh before
# the tests; runs as root; idempotent and quiet (prints apt's output only if it fails).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-system.sh: prometheus is not installed; run as root to apt-get install it" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } \
        >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "install-system.sh: apt-get install prometheus failed" >&2
    exit 1
fi
command -v prometheus >/dev/null
