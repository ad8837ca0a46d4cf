#!/usr/bin/env bash
# The whole test suite, on Python 3.11 (.venv) and Python 3.13 (.venv313, side by side; with Microsoft's worker
# library, so tests/test_worker.py loads and invokes the functions as Azure does). Installs what it needs; each
# pytest session starts its own Azurite on a free loopback port (and stops it after) plus loopback stand-ins
# for the Bot Framework and the engagement hub.
# Extra arguments go to both pytest runs, e.g. scripts/test.sh -k redeem   or   scripts/test.sh -m long
# Without Python 3.13 it says so and runs 3.11 only; in CI (CI=true) a missing 3.13 fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-313

status=0
have_313=0
if [ -x .venv313/bin/python ] && .venv313/bin/python -c 'import azure_functions_runtime_v1' 2>/dev/null; then
  have_313=1
fi

if [ "$have_313" -eq 1 ]; then
  # Both suites at once: they spend most of their time waiting on loopback servers, timeouts and Azurite (each
  # session has its own Azurite on a free port), so together they take about as long as one. Each one's output
  # is shown whole when it ends, 3.11 first.
  logs=$(mktemp -d)
  pid311="" pid313=""
  stop_suites() { for pid in $pid311 $pid313; do kill -TERM -- "-$pid" 2>/dev/null || true; done; }
  trap 'rm -rf "$logs"' EXIT
  trap 'stop_suites; exit 130' INT
  trap 'stop_suites; exit 143' TERM
  echo "== test: Python 3.11 ($(.venv/bin/python -V 2>&1)) and 3.13 with Microsoft's worker library ($(.venv313/bin/python -V 2>&1)), side by side =="
  # Job control on: without it a background command starts with SIGINT ignored, and so would every script the
  # tests start (a shell cannot trap a signal ignored on entry), which breaks the tests of Ctrl+C. Each suite
  # runs in its own process group; a Ctrl+C here stops both.
  set -m
  .venv/bin/python -m pytest "$@" > "$logs/311.log" 2>&1 &
  pid311=$!
  # The worker tests must run here: a missing worker library is a failure, not a skip.
  HANDOFF_REQUIRE_WORKER=1 .venv313/bin/python -m pytest "$@" > "$logs/313.log" 2>&1 &
  pid313=$!
  set +m
  wait "$pid311" || status=$?
  echo "== test: Python 3.11 suite =="
  cat "$logs/311.log"
  wait "$pid313" || { code=$?; [ "$status" -ne 0 ] || status=$code; }
  echo "== test: Python 3.13 suite with Microsoft's worker library =="
  cat "$logs/313.log"
else
  echo "== test: Python 3.11 suite ($(.venv/bin/python -V)) =="
  .venv/bin/python -m pytest "$@" || status=$?
  echo "test: Python 3.13 was not found (python3.13 on the PATH, or under ~/.pyenv/versions; or set PYTHON313=/path):" \
       "the suite ran on Python 3.11 only, and tests/test_worker.py (the functions under Microsoft's worker) did not run." >&2
  if [ "${CI:-}" = "true" ]; then
    echo "test: failing: CI expects Python 3.13" >&2
    [ "$status" -ne 0 ] || status=1
  fi
fi
exit "$status"
