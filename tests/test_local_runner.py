"""The local runner serves both function.json routes over real HTTP, and refuses what it cannot serve."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ACTIVITY_SET, fixture_bytes, invoke
from devtools.loopback import PROJECT, free_port, wait_for_port

sys.path.insert(0, str(PROJECT / "scripts"))
from local_runner import FunctionJsonError, load_routes  # noqa: E402


@pytest.fixture
def runner(env, hub_env) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "scripts" / "local_runner.py"), "--port", str(port)],
        cwd=PROJECT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
        assert [a["type"] for a in botframework.sent_activities()] == ["message", "typing", "message"]

        unauthenticated = client.post("/api/handoff/action", json=activity)
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["code"] == "unauthorized"

        assert client.get("/api/handoff/initiate").status_code == 405
        assert client.post("/api/nothing/here", content=b"{}").status_code == 404


def test_check_mode_validates_the_app() -> None:
    result = subprocess.run([sys.executable, str(PROJECT / "scripts" / "local_runner.py"), "--check"], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "handoff_initiate: [POST]" in result.stdout and "/api/handoff/initiate" in result.stdout
    assert "handoff_action: [POST]" in result.stdout and "(authLevel anonymous)" in result.stdout


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
        (lambda s: s["bindings"].pop(0), "exactly one httpTrigger"),
        (lambda s: s["bindings"].pop(1), "exactly one http output"),
        (lambda s: s["bindings"].append({"type": "queue", "direction": "out", "name": "q"}), "cannot serve"),
        (lambda s: s["bindings"][0].update(methods=["fetch"]), "unknown HTTP methods"),
        (lambda s: s["bindings"][0].update(route="x/{id:int}"), "route template"),
        (lambda s: s["bindings"][0].update(name="request"), "named 'request'"),
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
        ("from __future__ import annotations\nimport azure.functions as func\ndef main(req: func.HttpRequest):\n    return None\n", "string annotations"),
        ("def main(req: 'Missing'):\n    return None\n", "do not resolve"),
    ],
)
def test_refuses_annotations_the_worker_would_refuse(tmp_path: Path, code: str, says: str) -> None:
    with pytest.raises(FunctionJsonError, match=re.escape(says)):
        load_routes(make_app(tmp_path, GOOD, code=code, name=f"fn_{abs(hash(says)) % 10**8}"))


def test_the_functions_have_real_type_annotations() -> None:
    import typing

    import azure.functions as func

    import handoff_action
    import handoff_initiate

    for module in (handoff_action, handoff_initiate):
        assert typing.get_type_hints(module.main) == {"req": func.HttpRequest, "return": func.HttpResponse}
        assert module.main.__annotations__["req"] is func.HttpRequest


def test_accepts_a_good_function_json(tmp_path: Path) -> None:
    routes = load_routes(make_app(tmp_path, GOOD, name="fn_good_app"))
    assert routes[0].pattern.fullmatch("/api/x/42").group("id") == "42"
