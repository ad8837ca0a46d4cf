#!/usr/bin/env bash
# Run the function app locally: installs what it needs, checks local.settings.json (created from
# local.settings.example.json if missing), starts Azurite's table service on 127.0.0.1:10002 (unless something
# already listens there), waits until Table Storage answers, then runs `func start` when Azure Functions Core
# Tools is on the PATH (with Azurite's blob service on 10000 too, for the timer trigger), or the project's local
# runner (scripts/local_runner.py) otherwise, on http://localhost:7071.
#
#   scripts/run.sh [--port N] [other arguments for func start / the local runner]
#   PORT=N scripts/run.sh                        the same as --port N
#
# Ctrl+C, or `kill <PID of this script>` (SIGTERM), stops the app and the Azurite this script started.
# Also read: AZURITE_TABLE_PORT (10002), AZURITE_BLOB_PORT (10000), AZURITE_LOCATION (.azurite),
# STORAGE_WAIT_SECONDS (30: how long to wait for Table Storage before giving up).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "run: $*"; }
fail() { echo "run: $*" >&2; exit 2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# -- the app's port: --port N, --port=N or -p N among the arguments, else $PORT, else 7071 ----------------------
APP_PORT=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --port | -p) APP_PORT="${args[$((i + 1))]:-}" ;;
    --port=*) APP_PORT="${args[$i]#--port=}" ;;
  esac
done
if [ -z "$APP_PORT" ]; then
  APP_PORT="${PORT:-7071}"
  set -- "$@" --port "$APP_PORT"
fi
if ! [[ "$APP_PORT" =~ ^[0-9]+$ ]] || [ "$APP_PORT" -lt 1 ] || [ "$APP_PORT" -gt 65535 ]; then
  fail "the port must be a number from 1 to 65535 (got '$APP_PORT'); e.g. scripts/run.sh --port 7072"
fi
check_app_port() {
  if listening "$APP_PORT"; then
    fail "port $APP_PORT is already taken by another program, so the app cannot serve there. Stop that program
     (find it with: ss -ltnp 'sport = :$APP_PORT'), or pick another port: scripts/run.sh --port $((APP_PORT == 65535 ? 7072 : APP_PORT + 1))
     (or PORT=$((APP_PORT == 65535 ? 7072 : APP_PORT + 1)) scripts/run.sh)."
  fi
}
check_app_port

# -- what this script starts, and how it stops them -----------------------------------------------------------
# Each child runs in its own session (setsid), so that stopping one stops its whole tree (func start's worker
# too); a signal to this script (Ctrl+C, kill) is forwarded to all of them, and they are reaped before it exits.
CHILDREN=()
CHILD_SIGNALS=()
STEP_PID=""
if command -v setsid >/dev/null 2>&1; then SETSID=(setsid); else SETSID=(); fi
# start_child SIGNAL COMMAND...: SIGNAL is what stops it cleanly (Azurite saves its store on INT, not on TERM).
start_child() { local signal=$1; shift; "${SETSID[@]}" "$@" & CHILDREN+=("$!"); CHILD_SIGNALS+=("$signal"); }
stop_child() {
  local pid=$1 signal=${2:-TERM} target=$1
  [ ${#SETSID[@]} -gt 0 ] && target="-$1"
  kill -"$signal" -- "$target" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    # a zombie (exited, not reaped yet) still answers kill -0: wait reaps it below
    [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = "Z" ] && break
    sleep 0.1
  done
  kill -KILL -- "$target" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_all() {
  trap - INT TERM EXIT
  local index
  [ -z "$STEP_PID" ] || stop_child "$STEP_PID"
  for ((index = ${#CHILDREN[@]} - 1; index >= 0; index--)); do stop_child "${CHILDREN[$index]}" "${CHILD_SIGNALS[$index]}"; done
  CHILDREN=()
  CHILD_SIGNALS=()
}
on_signal() { echo; say "stopping (SIG$1): the app and the Azurite this script started"; stop_all; exit "$2"; }
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap stop_all EXIT
# Run a step in the background and wait for it, so that a signal is handled at once rather than after the step.
step() { "${SETSID[@]}" "$@" & STEP_PID=$!; local rc=0; wait "$STEP_PID" || rc=$?; STEP_PID=""; return $rc; }

step bash scripts/setup.sh
check_app_port
if [ ! -f local.settings.json ]; then
  cp local.settings.example.json local.settings.json
  say "created local.settings.json from local.settings.example.json"
fi
step .venv/bin/python scripts/localsettings.py check || exit 2

# -- storage -----------------------------------------------------------------------------------------------------
AZURITE_TABLE_PORT="${AZURITE_TABLE_PORT:-10002}"
AZURITE_BLOB_PORT="${AZURITE_BLOB_PORT:-10000}"
AZURITE_LOCATION="${AZURITE_LOCATION:-.azurite}"
AZURITE_LOG="$AZURITE_LOCATION/azurite.log"
TABLE_PID=""
mkdir -p "$AZURITE_LOCATION"
if listening "$AZURITE_TABLE_PORT"; then
  say "something already listens on 127.0.0.1:$AZURITE_TABLE_PORT; using it as Table Storage"
else
  start_child INT node_modules/.bin/azurite-table --tableHost 127.0.0.1 --tablePort "$AZURITE_TABLE_PORT" \
    --location "$AZURITE_LOCATION" --skipApiVersionCheck --disableTelemetry --silent >>"$AZURITE_LOG" 2>&1
  TABLE_PID=${CHILDREN[-1]}
  say "Azurite table service on http://127.0.0.1:$AZURITE_TABLE_PORT (data in $AZURITE_LOCATION/, log $AZURITE_LOG)"
fi
if command -v func >/dev/null 2>&1 && ! listening "$AZURITE_BLOB_PORT"; then
  # func start keeps the timer trigger's schedule state in AzureWebJobsStorage's blob service.
  start_child INT node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$AZURITE_BLOB_PORT" \
    --location "$AZURITE_LOCATION" --skipApiVersionCheck --disableTelemetry --silent >>"$AZURITE_LOG" 2>&1
  say "Azurite blob service on http://127.0.0.1:$AZURITE_BLOB_PORT (for func start's timer trigger)"
fi
if ! step .venv/bin/python scripts/localsettings.py wait-storage --timeout "${STORAGE_WAIT_SECONDS:-30}" ${TABLE_PID:+--pid "$TABLE_PID"}; then
  if [ -n "$TABLE_PID" ] && [ -s "$AZURITE_LOG" ]; then
    echo "run: the end of $AZURITE_LOG:" >&2
    tail -n 15 "$AZURITE_LOG" >&2
  fi
  exit 2
fi

# -- the app -----------------------------------------------------------------------------------------------------
check_app_port
if command -v func >/dev/null 2>&1; then
  say "func start (Azure Functions Core Tools) on port $APP_PORT; Ctrl+C stops everything"
  start_child TERM bash -c 'source .venv/bin/activate && exec func start "$@"' func "$@"
else
  say "Core Tools not found; serving with scripts/local_runner.py on port $APP_PORT; Ctrl+C stops everything"
  start_child TERM .venv/bin/python scripts/local_runner.py "$@"
fi
APP_PID=${CHILDREN[-1]}
status=0
wait "$APP_PID" || status=$?
say "the app exited (status $status); stopping Azurite"
exit "$status"
