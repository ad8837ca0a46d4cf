#!/usr/bin/env bash
# The whole test suite: installs what it needs, then pytest starts its own Azurite on a free loopback port
# (and stops it after) plus loopback stand-ins for the Bot Framework and the engagement hub.
# Extra arguments go to pytest, e.g. scripts/test.sh -k redeem   or   scripts/test.sh -m long
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
