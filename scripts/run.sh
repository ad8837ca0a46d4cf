#!/usr/bin/env bash
# Run the function app locally: installs what it needs, starts Azurite's table service on 127.0.0.1:10002
# (unless something already listens there), then `func start` when Azure Functions Core Tools is on the
# PATH, or the project's local runner (scripts/local_runner.py) on http://localhost:7071 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -f local.settings.json ] || { cp local.settings.example.json local.settings.json; echo "run: created local.settings.json from local.settings.example.json"; }

AZURITE_PID=""
cleanup() { [ -n "$AZURITE_PID" ] && kill "$AZURITE_PID" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
if .venv/bin/python -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(0 if s.connect_ex(("127.0.0.1",10002))==0 else 1)'; then
  echo "run: something already listens on 127.0.0.1:10002; using it as Table Storage"
else
  mkdir -p .azurite
  node_modules/.bin/azurite-table --tableHost 127.0.0.1 --tablePort 10002 --location .azurite \
    --skipApiVersionCheck --disableTelemetry --silent &
  AZURITE_PID=$!
  echo "run: Azurite table service on http://127.0.0.1:10002 (data in .azurite/)"
fi

if command -v func >/dev/null 2>&1; then
  echo "run: func start (Azure Functions Core Tools)"
  source .venv/bin/activate
  func start "$@"
else
  echo "run: Core Tools not found; serving with scripts/local_runner.py"
  .venv/bin/python scripts/local_runner.py "$@"
fi
