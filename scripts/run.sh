#!/usr/bin/env bash
# The run command: local broker + redis-server + worker + demo producer (Ctrl-C stops all).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
exec recall demo "$@"
