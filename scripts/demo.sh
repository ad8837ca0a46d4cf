#!/usr/bin/env bash
# The whole handoff on one machine: installs what it needs, then runs scripts/demo.py (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
