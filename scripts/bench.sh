#!/usr/bin/env bash
# Benchmarks (on demand, not part of the test suite): installs the benchmark-only peers, then benchmarks/run.py.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_REQUIREMENTS=requirements-bench.txt bash scripts/setup.sh
exec .venv/bin/python benchmarks/run.py "$@"
