#!/usr/bin/env bash
# Install everything the app, its tests and its tools need, on a fresh machine with Python 3.11 and Node.js:
# a .venv with requirements-dev.txt, and Azurite from npm (node_modules). Idempotent and quick when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON="$candidate"; break; fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python 3.11 is required (python3.11 or python3 on PATH)" >&2; exit 1; }
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' \
  || { echo "setup: Python 3.11 or newer is required; set PYTHON=/path/to/python3.11" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "setup: Node.js and npm are required (for Azurite)" >&2; exit 1; }

python_stamp() { cat requirements.txt requirements-dev.txt ${EXTRA_REQUIREMENTS:-} | sha256sum | cut -c1-16; }
npm_stamp() { sha256sum package-lock.json | cut -c1-16; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$(python_stamp)" ]; then
  echo "setup: installing Python packages"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt ${EXTRA_REQUIREMENTS:+-r $EXTRA_REQUIREMENTS}
  python_stamp > .venv/.setup-stamp
fi
if [ "$(cat node_modules/.setup-stamp 2>/dev/null)" != "$(npm_stamp)" ] || [ ! -x node_modules/.bin/azurite-table ]; then
  echo "setup: installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  npm_stamp > node_modules/.setup-stamp
fi
