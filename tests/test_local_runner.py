"""The local runner: serves the function.json routes over real HTTP as the host routes them, runs timer
functions on their NCRONTAB schedule, refuses what it cannot serve (or what the worker would refuse), and
tells a person what to do when it cannot start (port taken, a setting missing, the wrong Python)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from devtools.fake_app import make_fake_app
from devtools.loopback import PROJECT, free_port, wait_for_port
from tests.helpers import ACTIVITY_SET, fixture_bytes, invoke

sys.path.insert(0, str(PROJECT / "scripts"))
from local_runner import CronSchedule, FunctionJsonError, load_app, load_routes  # noqa: E402

RUNNER = str(PROJECT / "scripts" / "local_runner.py")


@pytest.fixture
def runner(env, hub_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("HANDOFF_SWEEP_SCHEDULE", "0 0 0 1 1 *")  # as local.settings.json has it (the sweeper stays idle)
    port = free_port()
    process = subprocess.Popen([sys.executable, RUNNER, "--port", str(port)], cwd=PROJECT, env=dict(os.environ),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def test_serves_both_routes_over_http(runner: str, botframework, hub_env) -> None:
    with httpx.Client(base_url=runner, timeout=15) as client:
        created = client.post("/api/handoff/initiate", content=fixture_bytes(ACTIVITY_SET), params={"userId": "57162b23-ae6f-4e95-9774-27f7cb019864"})
        assert created.status_code == 201
        assert created.headers["content-type"].startswith("application/json")
        token = created.json()["continuationToken"]
        assert len(hub_env.requests) == 1

        activity = invoke(token, service_url=botframework.service_url)
        redeemed = client.post("/api/handoff/action", json=activity, headers={"Authorization": f"Bearer {botframework.jwt()}"})
        assert redeemed.status_code == 200 and redeemed.content == b""
        assert [a["type"] for a in botframework.sent_activities()][:2] == ["message", "typing"]

        unauthenticated = client.post("/api/handoff/action", json=activity)
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["code"] == "unauthorized"


def test_routes_as_the_host_does(runner: str) -> None:
    """ASP.NET Core routing in the host: one trailing slash matches the same route, literal segments are
    case-insensitive, another method than the function's does not match (404, as in Azure), nor does a doubled slash."""
    with httpx.Client(base_url=runner, timeout=15) as client:
        assert client.post("/api/handoff/initiate/", content=b"{not json").status_code == 400
        assert client.post("/API/Handoff/Initiate", content=b"{not json").status_code == 400
        assert client.get("/api/handoff/initiate").status_code == 404
        assert client.post("/api/handoff/initiate//", content=b"{}").status_code == 404
        assert client.post("/api/nothing/here", content=b"{}").status_code == 404


def test_check_works_as_the_readme_writes_it() -> None:
    """`python scripts/local_runner.py --check` with whatever `python` is on the PATH: without the app's packages
    it runs itself again with the project's .venv."""
    python = shutil.which("python") or shutil.which("python3")
    env = {**os.environ, "HANDOFF_SWEEP_SCHEDULE": "0 */1 * * * *"}  # as local.settings.json (from the example) has it
    result = subprocess.run([python, "scripts/local_runner.py", "--check"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "handoff_initiate: [POST]" in result.stdout and "/api/handoff/initiate" in result.stdout
    assert "handoff_action: [POST]" in result.stdout and "(authLevel anonymous)" in result.stdout


def test_a_taken_port_is_named_with_how_to_choose_another() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, RUNNER, "--port", str(port)], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already taken" in result.stderr and "--port " in result.stderr
    assert "Traceback" not in result.stderr and "/api/handoff/initiate" not in result.stdout


# -- timers ---------------------------------------------------------------------------------------------------


def test_runs_a_timer_function_on_its_schedule(tmp_path: Path) -> None:
    app = make_fake_app(tmp_path / "app")
    ticks = tmp_path / "ticks.txt"
    port = free_port()
    env = {**os.environ, "TICK_SCHEDULE": "*/1 * * * * *", "TICK_FILE": str(ticks)}
    process = subprocess.Popen([sys.executable, RUNNER, "--app", str(app), "--port", str(port)], cwd=PROJECT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not ticks.exists() or ticks.read_text().count("\n") < 2):
            time.sleep(0.2)
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert ticks.exists() and ticks.read_text().count("\n") >= 2, output[-2000:]
    assert "tick: timerTrigger, schedule '*/1 * * * * *'" in output
    assert ticks.read_text().splitlines()[0] == "past_due=False"


def test_a_schedule_setting_that_is_not_set_is_named(tmp_path: Path) -> None:
    """As in the host: that function is in error (named, with the setting), the others are served; --check fails."""
    app = make_fake_app(tmp_path / "app")
    env = {k: v for k, v in os.environ.items() if k != "TICK_SCHEDULE"}
    result = subprocess.run([sys.executable, RUNNER, "--app", str(app), "--check"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "tick/function.json: '%TICK_SCHEDULE%' does not resolve to a value: set the app setting TICK_SCHEDULE" in result.stderr
    assert "items: [GET,POST]" in result.stdout and "tick: timerTrigger" not in result.stdout
    port = free_port()
    process = subprocess.Popen([sys.executable, RUNNER, "--app", str(app), "--port", str(port)], cwd=PROJECT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=20)
        assert httpx.get(f"http://127.0.0.1:{port}/api/items/1?kind=text", timeout=15).text == "h\u00e9llo"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 */1 * * * *", "2026-11-24T10:00:30", "2026-11-24T10:01:00"),
        ("*/15 * * * * *", "2026-11-24T10:00:30", "2026-11-24T10:00:45"),
        ("0 30 9 * * Mon-Fri", "2026-11-27T10:00:00", "2026-11-30T09:30:00"),  # Friday after 9:30 -> Monday
        ("0 0 0 1 Jan *", "2026-11-24T10:00:00", "2027-01-01T00:00:00"),
        ("0 0 12 * * 0", "2026-11-24T10:00:00", "2026-11-29T12:00:00"),  # Sunday
        ("5,10 0 0 * * *", "2026-11-24T00:00:05", "2026-11-24T00:00:10"),
    ],
)
def test_ncrontab_next_occurrence(expression: str, after: str, expected: str) -> None:
    moment = datetime.fromisoformat(after).replace(tzinfo=timezone.utc)
    assert CronSchedule.parse(expression).next_after(moment) == datetime.fromisoformat(expected).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize(("expression", "says"), [
    ("0 */5 * * *", "six fields"),
    ("0 61 * * * *", "out of range for the minute field"),
    ("0 */0 * * * *", "bad step"),
    ("0 0 0 * Foo *", "not a value of the month field"),
])
def test_ncrontab_refuses_bad_expressions(expression: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        CronSchedule.parse(expression)


# -- what it refuses, as the worker would ---------------------------------------------------------------------


def make_app(tmp_path: Path, spec: dict, code: str = "def main(req):\n    return None\n", name: str = "fn_test_app") -> Path:
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    folder = tmp_path / name
    folder.mkdir()
    (folder / "function.json").write_text(json.dumps(spec))
    (folder / "__init__.py").write_text(code)
    return tmp_path


GOOD = {
    "bindings": [
        {"authLevel": "anonymous", "type": "httpTrigger", "direction": "in", "name": "req", "methods": ["post"], "route": "x/{id}"},
        {"type": "http", "direction": "out", "name": "$return"},
    ]
}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: s["bindings"].pop(0), "exactly one trigger"),
        (lambda s: s["bindings"].pop(1), "exactly one http output"),
        (lambda s: s["bindings"].append({"type": "queue", "direction": "out", "name": "q"}), "cannot serve"),
        (lambda s: s["bindings"][0].update(methods=["fetch"]), "unknown HTTP methods"),
        (lambda s: s["bindings"][0].update(route="x/{id:int}"), "route template"),
        (lambda s: s["bindings"][0].update(name="request"), "takes ['req'], which function.json does not declare"),
        (lambda s: s.update(scriptFile="missing.py"), "does not exist"),
        (lambda s: s.update(entryPoint="run"), "is not a function"),
        (lambda s: s["bindings"][1].update(name="res"), "'$return'"),
    ],
)
def test_refuses_a_function_json_it_cannot_serve(tmp_path: Path, change, says: str) -> None:
    spec = json.loads(json.dumps(GOOD))
    change(spec)
    name = f"fn_{abs(hash(says)) % 10**8}"
    with pytest.raises(FunctionJsonError, match=re.escape(says)):
        load_routes(make_app(tmp_path, spec, name=name))


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("def main(req: str):\n    return None\n", "must be annotated azure.functions.HttpRequest"),
        ("def main(req: 'Missing'):\n    return None\n", "do not resolve"),
        ("import azure.functions as func\ndef main(req: func.HttpRequest) -> dict:\n    return {}\n", "must return azure.functions.HttpResponse"),
        ("def main(req, extra):\n    return None\n", "takes ['extra'], which function.json does not declare"),
    ],
)
def test_refuses_annotations_the_worker_would_refuse(tmp_path: Path, code: str, says: str) -> None:
    with pytest.raises(FunctionJsonError, match=re.escape(says)):
        load_routes(make_app(tmp_path, GOOD, code=code, name=f"fn_{abs(hash(says)) % 10**8}"))


def test_accepts_postponed_annotations_as_the_worker_does(tmp_path: Path) -> None:
    """The worker resolves annotations with typing.get_type_hints, so `from __future__ import annotations` loads."""
    code = ("from __future__ import annotations\nimport azure.functions as func\n"
            "def main(req: func.HttpRequest) -> func.HttpResponse:\n    return func.HttpResponse('ok')\n")
    routes = load_routes(make_app(tmp_path, GOOD, code=code, name="fn_future_annotations"))
    assert routes[0].function == "fn_future_annotations"


def test_the_functions_annotations_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    import typing

    import azure.functions as func

    monkeypatch.setenv("HANDOFF_SWEEP_SCHEDULE", "0 */1 * * * *")
    app = load_app(PROJECT)
    assert not app.errors
    for route in app.routes:
        hints = typing.get_type_hints(route.handler)
        assert hints[route.param_name] is func.HttpRequest and hints["return"] is func.HttpResponse
    for timer in app.timers:
        hints = typing.get_type_hints(timer.handler)
        assert hints[timer.param_name] is func.TimerRequest and hints.get("return") is type(None)


def test_accepts_a_good_function_json(tmp_path: Path) -> None:
    routes = load_routes(make_app(tmp_path, GOOD, name="fn_good_app"))
    assert routes[0].pattern.fullmatch("/api/x/42").group("id") == "42"
