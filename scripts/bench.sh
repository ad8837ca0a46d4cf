#!/usr/bin/env bash
# Benchmarks (on demand, not part of the test suite): the .venv (scripts/setup.sh), the benchmark-only peers
# (requirements-bench.txt, installed once per change of that file), then benchmarks/run.py with the arguments:
#   scripts/bench.sh [--only GROUP]... [--seconds N] [--update-readme]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
stamp="$(sha256sum requirements-bench.txt | cut -c1-16)"
if [ "$(cat .venv/.bench-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "bench: installing the benchmark-only peers (requirements-bench.txt)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
  echo "$stamp" > .venv/.bench-stamp
fi
exec .venv/bin/python benchmarks/run.py "$@"
