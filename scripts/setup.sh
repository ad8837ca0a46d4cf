#!/usr/bin/env bash
# Install everything the app, its tests and its tools need, on a fresh machine with Python 3.11 and Node.js:
# a .venv (Python 3.11) with requirements-dev.txt, and Azurite from npm (node_modules). Idempotent and quick when
# up to date.
#
#   scripts/setup.sh              .venv and Azurite (what run.sh, demo.sh and bench.sh use)
#   scripts/setup.sh --with-313   also .venv313: Python 3.13 with Microsoft's worker library (what test.sh uses)
#
# Interpreters are found by name on the PATH (python3.11 / python3.13), then under pyenv's versions folder
# ($PYENV_ROOT or ~/.pyenv, then /root/.pyenv); PYTHON311=/path and PYTHON313=/path override the search.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_313=false
for arg in "$@"; do
  case "$arg" in
    --with-313) WITH_313=true ;;
    *) echo "setup: unknown argument '$arg' (known: --with-313)" >&2; exit 2 ;;
  esac
done

# find_python MINOR: prints a working python3.MINOR, or nothing
find_python() {
  local minor=$1 override candidate
  override="PYTHON3${minor}"
  for candidate in "${!override:-}" "python3.${minor}" \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."${minor}"*/bin/python3."${minor}" \
      /root/.pyenv/versions/3."${minor}"*/bin/python3."${minor}"; do
    [ -n "$candidate" ] || continue
    # a pyenv shim exists on the PATH even when that version is not selected: ask the interpreter itself
    if "$candidate" -c "import sys; sys.exit(0 if sys.version_info[:2] == (3, ${minor}) else 1)" >/dev/null 2>&1; then
      command -v "$candidate" 2>/dev/null || echo "$candidate"
      return 0
    fi
  done
  return 0
}

# make_venv DIR PYTHON: a venv at DIR from PYTHON, with requirements-dev.txt, rebuilt when either changes
make_venv() {
  local dir=$1 python=$2 stamp
  stamp="$("$python" -c 'import sys; print(sys.version)' | cat - requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
  if [ -x "$dir/bin/python" ] && ! "$dir/bin/python" -c 'import sys' >/dev/null 2>&1; then rm -rf "$dir"; fi
  if [ ! -x "$dir/bin/python" ]; then
    echo "setup: creating $dir with $python"
    "$python" -m venv "$dir"
  fi
  if [ "$(cat "$dir/.setup-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "setup: installing Python packages into $dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt ${EXTRA_REQUIREMENTS:+-r $EXTRA_REQUIREMENTS}
    echo "$stamp" > "$dir/.setup-stamp"
  fi
}

PYTHON="${PYTHON:-$(find_python 11)}"
if [ -z "$PYTHON" ]; then
  # no 3.11: a newer python3 still runs the app (the suite's 3.13 pass covers 3.13 anyway)
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)'; then
    PYTHON=python3
    echo "setup: Python 3.11 not found (python3.11 on the PATH, or under ~/.pyenv/versions); using $(python3 -V) for .venv" >&2
  else
    echo "setup: Python 3.11 not found (python3.11 on the PATH, or under ~/.pyenv/versions); install it or set PYTHON311=/path/to/python3.11" >&2
    exit 1
  fi
fi
command -v npm >/dev/null 2>&1 || { echo "setup: Node.js and npm are required (for Azurite)" >&2; exit 1; }

make_venv .venv "$PYTHON"
if [ "$WITH_313" = true ]; then
  PYTHON313="$(find_python 13)"
  if [ -n "$PYTHON313" ]; then
    make_venv .venv313 "$PYTHON313"
  else
    echo "setup: Python 3.13 not found (python3.13 on the PATH, or under ~/.pyenv/versions); .venv313 not made; set PYTHON313=/path/to/python3.13" >&2
  fi
fi

npm_stamp() { sha256sum package-lock.json | cut -c1-16; }
if [ "$(cat node_modules/.setup-stamp 2>/dev/null)" != "$(npm_stamp)" ] || [ ! -x node_modules/.bin/azurite-table ]; then
  echo "setup: installing Azurite (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  npm_stamp > node_modules/.setup-stamp
fi
