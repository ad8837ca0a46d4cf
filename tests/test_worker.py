"""The functions under Microsoft's Python worker library (azure-functions-runtime-v1, Python >= 3.13), driven by
the host stand-in devtools/worker_host.py from a deployment-shaped copy of the app (only what .funcignore lets
through): every function loads, the main paths answer as they do in-process, the 4 MiB channel, and the
detections (function.json vs module, imports of what is not deployed, answers the worker cannot encode) proven
on deliberately broken copies. Also: the local runner and the worker agree on the same requests.

These need Python 3.13: scripts/test.sh runs them in its 3.13 pass (HANDOFF_REQUIRE_WORKER=1, where a missing
worker library is a failure); in the 3.11 pass they are reported as skipped, with the reason."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.fake_app import make_fake_app
from devtools.loopback import PROJECT, free_port, wait_for_port
from tests.helpers import ACTIVITY_SET, action, body_json, fixture_bytes, handoff_event, initiate, invoke

_HAVE_WORKER = sys.version_info >= (3, 13) and importlib.util.find_spec("azure_functions_runtime_v1") is not None
if os.environ.get("HANDOFF_REQUIRE_WORKER") == "1" and not _HAVE_WORKER:
    raise RuntimeError("HANDOFF_REQUIRE_WORKER=1 but Microsoft's worker library is not importable here "
                       f"(Python {sys.version.split()[0]}): pip install azure-functions-runtime-v1 on Python 3.13")
pytestmark = pytest.mark.skipif(not _HAVE_WORKER, reason="needs Python 3.13 and azure-functions-runtime-v1: "
                                "runs in the Python 3.13 pass of scripts/test.sh")

if _HAVE_WORKER:
    from devtools.worker_host import (
        CHANNEL_LIMIT_BYTES,
        ChannelLimitExceeded,
        HostError,
        WorkerHost,
        deployment_copy,
    )

USER = "57162b23-ae6f-4e95-9774-27f7cb019864"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deployment_copy(PROJECT, tmp_path_factory.mktemp("deployed") / "wwwroot")


@pytest.fixture
def worker(env, deployed: Path) -> Iterator[WorkerHost]:
    host = WorkerHost(deployed).start()
    yield host
    host.stop()


def _same(worker_answer, in_process) -> None:
    """The worker's answer equals the in-process one once encoded as the worker encodes every response
    (azure.functions' HttpResponseConverter: e.g. a response without a mimetype gets text/plain): status,
    headers (names case-insensitively), body."""
    from azure.functions.http import HttpResponseConverter

    encoded = HttpResponseConverter.encode(in_process, expected_type=None).value
    assert worker_answer.failure is None, worker_answer.failure
    assert worker_answer.status == in_process.status_code == int(encoded["status_code"].value)
    assert {k.lower(): v for k, v in worker_answer.headers.items()} == {k.lower(): v.value for k, v in encoded["headers"].items()}
    assert worker_answer.body == in_process.get_body()


# -- the app as deployed ----------------------------------------------------------------------------------------


def test_every_function_loads_from_the_deployed_app(worker: WorkerHost, deployed: Path) -> None:
    folders = {p.parent.name for p in PROJECT.glob("*/function.json")}
    assert set(worker.functions) == folders and {"handoff_initiate", "handoff_action"} <= folders
    shipped = {p.relative_to(deployed).parts[0] for p in deployed.rglob("*")}
    assert not shipped & {"tests", "devtools", "scripts", "benchmarks", ".venv", ".venv313", "node_modules", "local.settings.json"}
    assert {"host.json", "requirements.txt", "shared"} <= shipped
    assert worker.capabilities.get("RawHttpBodyBytes") == "true"


# -- main paths, as in-process ----------------------------------------------------------------------------------


def test_initiate_answers_as_in_process(worker: WorkerHost, hub_env) -> None:
    created = worker.http("POST", "/api/handoff/initiate", body=fixture_bytes(ACTIVITY_SET), headers=JSON, query=f"userId={USER}")
    assert created.failure is None, created.failure
    assert created.status == 201 and created.headers["content-type"] == "application/json"
    first = json.loads(created.body)
    repeat = initiate(fixture_bytes(ACTIVITY_SET), params={"userId": USER})  # in-process, same tables
    assert repeat.status_code == 200
    assert body_json(repeat)["handoffId"] == first["handoffId"] and body_json(repeat)["expiresAt"] == first["expiresAt"]
    again = worker.http("POST", "/api/handoff/initiate/", body=fixture_bytes(ACTIVITY_SET), headers=JSON, query=f"userId={USER}")
    assert again.status == 200 and json.loads(again.body)["handoffId"] == first["handoffId"]

    no_handoff = json.dumps({"activities": [handoff_event(name="something.else")]}).encode()
    _same(worker.http("POST", "/api/handoff/initiate", body=no_handoff, headers=JSON), initiate(no_handoff))
    _same(worker.http("POST", "/api/handoff/initiate", body=b"{not json", headers=JSON), initiate(b"{not json"))
    assert worker.http("POST", "/api/handoff/initiate", body=b"{not json").status == 400


def test_action_answers_as_in_process(worker: WorkerHost, botframework, hub_env) -> None:
    token = json.loads(worker.http("POST", "/api/handoff/initiate", body=fixture_bytes(ACTIVITY_SET), headers=JSON,
                                   query=f"userId={USER}").body)["continuationToken"]
    activity = json.dumps(invoke(token, service_url=botframework.service_url)).encode()
    unauthenticated = worker.http("POST", "/api/handoff/action", body=activity, headers=JSON)
    _same(unauthenticated, action(activity))
    assert unauthenticated.status == 401

    jwt = botframework.jwt()
    bad = worker.http("POST", "/api/handoff/action", body=b"[1, 2", headers={**JSON, "Authorization": f"Bearer {jwt}"})
    _same(bad, action(b"[1, 2", jwt=jwt))
    assert bad.status == 400

    redeemed = worker.http("POST", "/api/handoff/action", body=activity, headers={**JSON, "Authorization": f"Bearer {jwt}"})
    assert (redeemed.failure, redeemed.status, redeemed.body) == (None, 200, b"")
    assert [a["type"] for a in botframework.sent_activities()][:2] == ["message", "typing"]


def test_wrong_method_and_unknown_route_are_404_as_in_the_host(worker: WorkerHost) -> None:
    assert worker.http("GET", "/api/handoff/initiate").status == 404
    assert worker.http("POST", "/api/nothing/here", body=b"{}").status == 404


def test_the_timer_functions_run_through_the_worker(worker: WorkerHost) -> None:
    """handoff_sweeper (and any timer function): invoked as the host invokes a timer, it completes."""
    timers = [spec.name for spec in worker.functions.values() if spec.trigger.type == "timerTrigger"]
    assert timers == [name for name in ("handoff_sweeper",) if (PROJECT / name / "function.json").exists()]
    for name in timers:
        worker.timer(name)
        worker.timer(name, past_due=True)


# -- the 4 MiB channel ------------------------------------------------------------------------------------------


def test_a_body_over_the_default_cap_gets_413_from_the_app_through_the_worker(worker: WorkerHost) -> None:
    assert "HANDOFF_MAX_BODY_BYTES" not in os.environ  # the default: 4,000,000 bytes
    body = b"x" * 4_000_001
    answer = worker.http("POST", "/api/handoff/initiate", body=body, headers=JSON)
    assert answer.failure is None and answer.status == 413
    _same(answer, initiate(body))


def test_a_body_at_the_channel_limit_never_reaches_the_app(worker: WorkerHost) -> None:
    with pytest.raises(ChannelLimitExceeded, match=f"{CHANNEL_LIMIT_BYTES}-byte limit"):
        worker.http("POST", "/api/handoff/initiate", body=b"x" * CHANNEL_LIMIT_BYTES, headers=JSON)
    # the stand-in is still serving afterwards
    assert worker.http("POST", "/api/handoff/initiate", body=b"{not json", headers=JSON).status == 400


# -- detections, proven on deliberately broken copies -----------------------------------------------------------


def _broken(tmp_path: Path, deployed: Path, edit) -> Path:
    app = tmp_path / "broken"
    shutil.copytree(deployed, app)
    edit(app)
    return app


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_fails_when_function_json_and_module_disagree(env, tmp_path: Path, deployed: Path) -> None:
    app = _broken(tmp_path, deployed, lambda a: _replace(a / "handoff_initiate" / "function.json", '"name": "req"', '"name": "request"'))
    with pytest.raises(HostError, match=r"handoff_initiate/function\.json: the worker could not load handoff_initiate/__init__\.py: .*not in function\.json"):
        WorkerHost(app).start().stop()


def test_fails_when_a_return_binding_is_not_out(env, tmp_path: Path, deployed: Path) -> None:
    app = _broken(tmp_path, deployed, lambda a: _replace(a / "handoff_action" / "function.json", '"direction": "out"', '"direction": "in"'))
    with pytest.raises(HostError, match=r"handoff_action/function\.json: .*\$return.*direction"):
        WorkerHost(app).start().stop()


def test_fails_when_a_function_imports_what_funcignore_leaves_out(env, tmp_path: Path, deployed: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(deployed, source)
    shutil.copytree(PROJECT / "devtools", source / "devtools")  # present in the project, left out by .funcignore
    _replace(source / "handoff_initiate" / "__init__.py", "import azure.functions as func\n",
             "import azure.functions as func\nimport devtools.payloads  # noqa: F401\n")
    app = deployment_copy(source, tmp_path / "deployed")
    assert not (app / "devtools").exists()
    with pytest.raises(HostError, match=r"handoff_initiate/function\.json: .*No module named 'devtools'"):
        WorkerHost(app).start().stop()


def test_fails_when_a_function_returns_what_the_worker_cannot_encode(env, tmp_path: Path, deployed: Path) -> None:
    def edit(app: Path) -> None:
        with (app / "handoff_initiate" / "__init__.py").open("a") as module:
            module.write("\n\n_real_main = main\n\n\ndef main(req: func.HttpRequest) -> func.HttpResponse:\n"
                         "    return {'status': _real_main(req).status_code}\n")

    host = WorkerHost(_broken(tmp_path, deployed, edit)).start()
    try:
        answer = host.http("POST", "/api/handoff/initiate", body=b"{not json", headers=JSON)
    finally:
        host.stop()
    assert answer.status == 500 and answer.body == b""
    assert answer.failure and "dict" in answer.failure


# -- route parameters, the request as the host presents it, timers: a tiny app of fakes -------------------------

@pytest.fixture
def fake_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TICK_SCHEDULE", "*/1 * * * * *")
    monkeypatch.setenv("TICK_FILE", str(tmp_path / "ticks.txt"))
    return make_fake_app(tmp_path / "app")


def test_route_parameters_query_and_headers_reach_the_function_as_the_host_sends_them(fake_app: Path) -> None:
    with WorkerHost(fake_app).start() as host:
        answer = host.http("POST", "/api/Items/a%20b%2Fc/", body=b"\x00raw\xff",
                           headers=[("X-Mixed-Case", "One"), ("x-mixed-case", "Two"), ("X-Empty", "")],
                           query="q=1&empty=&Q=2&plus=a+b")
    assert answer.failure is None and answer.status == 200
    seen = json.loads(answer.body)
    assert seen["route_params"] == {"itemId": "a b%2Fc"}
    assert seen["params"] == {"q": "1,2", "plus": "a b"}  # empty values dropped, repeated keys joined
    assert seen["headers"]["x-mixed-case"] == "One,Two" and seen["headers"]["x-empty"] == ""
    assert seen["body"] == "\x00raw\xff"


def test_a_timer_function_runs_through_the_worker(fake_app: Path, tmp_path: Path) -> None:
    with WorkerHost(fake_app).start() as host:
        host.timer("tick")
        host.timer("tick", past_due=True)
    assert (tmp_path / "ticks.txt").read_text() == "past_due=False\npast_due=True\n"


def test_a_failing_function_is_a_500_with_the_reason_for_the_host(fake_app: Path) -> None:
    with WorkerHost(fake_app).start() as host:
        answer = host.http("GET", "/api/items/1", query="kind=fail")
    assert answer.status == 500 and answer.body == b"" and "boom" in answer.failure


# -- the local runner agrees with the worker --------------------------------------------------------------------


def _runner(app: Path, engine: str, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "scripts" / "local_runner.py"), "--app", str(app), "--port", str(port), "--engine", engine],
        cwd=PROJECT, env={**os.environ, "TICK_SCHEDULE": "0 0 0 1 1 *"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=30)
    except Exception:
        process.kill()
        raise AssertionError(f"the runner ({engine}) did not start: {process.communicate(timeout=10)[1].decode()[-2000:]}")
    return process


REQUESTS = [
    ("POST", "/api/items/a%20b/?q=1&empty=&Q=2", {"X-Mixed-Case": "v", "Content-Type": "application/octet-stream"}, b"\x00\x01bytes"),
    ("GET", "/api/items/7?kind=text", {}, b""),
    ("GET", "/api/items/7?kind=headers", {}, b""),
    ("GET", "/api/items/7?kind=fail", {}, b""),
    ("PUT", "/api/items/7", {}, b"x"),
    ("GET", "/api/items", {}, b""),
    ("GET", "/api/items/7//", {}, b""),
]


def test_the_local_runner_answers_as_the_worker(fake_app: Path) -> None:
    answers = {}
    for engine in ("inprocess", "worker"):
        port = free_port()
        process = _runner(fake_app, engine, port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
                # the same Host header for both, so that the URL the function sees is the same
                answers[engine] = [client.request(method, path, headers={"Host": "localhost:7071", **headers}, content=body)
                                   for method, path, headers, body in REQUESTS]
        finally:
            process.terminate()
            process.wait(10)
    for request, here, there in zip(REQUESTS, answers["inprocess"], answers["worker"]):
        drop = {"date", "server"}
        assert (here.status_code, {k: v for k, v in here.headers.items() if k not in drop}, here.content) == \
               (there.status_code, {k: v for k, v in there.headers.items() if k not in drop}, there.content), request
    statuses = [a.status_code for a in answers["worker"]]
    assert statuses == [200, 200, 202, 500, 404, 404, 404]
    echoed = answers["worker"][0].json()
    assert echoed["params"] == {"q": "1,2"} and echoed["route_params"] == {"itemId": "a b"}
    assert echoed["headers"]["x-mixed-case"] == "v" and echoed["body"] == "\x00\x01bytes"
    assert answers["worker"][1].headers["content-type"] == "text/plain; charset=utf-8"
    assert answers["worker"][0].headers["content-type"] == "application/json"  # no charset added to a non-text type
