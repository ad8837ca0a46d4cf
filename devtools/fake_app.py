"""A tiny function app of fakes, for the tests of the host stand-in and the local runner: `items` (HTTP, route
`items/{itemId}`, GET and POST) echoes what it was given as the worker presents it, or answers text, custom
headers or an exception on `?kind=`; `tick` (timerTrigger named `timer`, schedule `%TICK_SCHEDULE%`) appends a
line to the file named by TICK_FILE. `items` uses `from __future__ import annotations`, which the worker accepts."""

from __future__ import annotations

import json
from pathlib import Path

ECHO = '''from __future__ import annotations

import json

import azure.functions as func


def main(req: func.HttpRequest) -> func.HttpResponse:
    kind = req.params.get("kind")
    if kind == "text":
        return func.HttpResponse("h\\u00e9llo", mimetype="text/plain", charset="utf-8")
    if kind == "headers":
        return func.HttpResponse(status_code=202, headers={"X-Custom": "1", "Retry-After": "5"})
    if kind == "fail":
        raise RuntimeError("boom")
    seen = {"method": req.method, "headers": dict(req.headers), "params": dict(req.params),
            "route_params": dict(req.route_params), "body": req.get_body().decode("latin-1")}
    return func.HttpResponse(json.dumps(seen, sort_keys=True), mimetype="application/json")
'''

TICK = '''import os

import azure.functions as func


def main(timer: func.TimerRequest) -> None:
    with open(os.environ["TICK_FILE"], "a") as out:
        out.write(f"past_due={timer.past_due}\\n")
'''


def make_fake_app(root: Path) -> Path:
    """An app with an HTTP function on a route with a parameter, and a timer function."""
    (root / "host.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "host.json").write_text(json.dumps({"version": "2.0"}))
    (root / "items").mkdir()
    (root / "items" / "function.json").write_text(json.dumps({"scriptFile": "__init__.py", "bindings": [
        {"authLevel": "anonymous", "type": "httpTrigger", "direction": "in", "name": "req", "methods": ["get", "post"], "route": "items/{itemId}"},
        {"type": "http", "direction": "out", "name": "$return"}]}))
    (root / "items" / "__init__.py").write_text(ECHO)
    (root / "tick").mkdir()
    (root / "tick" / "function.json").write_text(json.dumps({"scriptFile": "__init__.py", "bindings": [
        {"type": "timerTrigger", "direction": "in", "name": "timer", "schedule": "%TICK_SCHEDULE%"}]}))
    (root / "tick" / "__init__.py").write_text(TICK)
    return root
