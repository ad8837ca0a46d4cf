#!/usr/bin/env bash
# The whole test suite, on Python 3.11 (.venv) and then on Python 3.13 (.venv313, with Microsoft's worker
# library, so tests/test_worker.py loads and invokes the functions as Azure does). Installs what it needs; each
# pytest session starts its own Azurite on a free loopback port (and stops it after) plus loopback stand-ins
# for the Bot Framework and the engagement hub.
# Extra arguments go to both pytest runs, e.g. scripts/test.sh -k redeem   or   scripts/test.sh -m long
# Without Python 3.13 it says so and runs 3.11 only; in CI (CI=true) a missing 3.13 fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-313

status=0
echo "== test: Python 3.11 suite ($(.venv/bin/python -V)) =="
.venv/bin/python -m pytest "$@" || status=$?

if [ -x .venv313/bin/python ] && .venv313/bin/python -c 'import azure_functions_runtime_v1' 2>/dev/null; then
  echo "== test: Python 3.13 suite with Microsoft's worker library ($(.venv313/bin/python -V)) =="
  # The worker tests must run here: a missing worker library is a failure, not a skip.
  HANDOFF_REQUIRE_WORKER=1 .venv313/bin/python -m pytest "$@" || { code=$?; [ "$status" -ne 0 ] || status=$code; }
else
  echo "test: Python 3.13 was not found (python3.13 on the PATH, or under ~/.pyenv/versions; or set PYTHON313=/path):" \
       "the suite ran on Python 3.11 only, and tests/test_worker.py (the functions under Microsoft's worker) did not run." >&2
  if [ "${CI:-}" = "true" ]; then
    echo "test: failing: CI expects Python 3.13" >&2
    [ "$status" -ne 0 ] || status=1
  fi
fi
exit "$status"
