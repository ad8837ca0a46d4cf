"""Building requests the way the Functions host does, and payloads from the field fixtures."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import azure.functions as func

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ACTIVITY_SET = "copilot-studio-handoff-initiate.activityset.json"
INVOKE = "teams-handoff-action.invoke.json"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def handoff_event(**changes: Any) -> dict[str, Any]:
    """The fixture's handoff.initiate event, with top-level fields replaced."""
    event = copy.deepcopy(fixture(ACTIVITY_SET)["activities"][0])
    event.update(changes)
    return event


def post(
    main: Callable[[func.HttpRequest], func.HttpResponse],
    body: bytes | dict[str, Any] | list[Any],
    *,
    route: str,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> func.HttpResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/{route}",
        headers={"Content-Type": "application/json", **(headers or {})},
        params=params or {},
        route_params={},
        body=data,
    )
    return main(request)


def initiate(body: bytes | dict[str, Any], *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> func.HttpResponse:
    import handoff_initiate

    return post(handoff_initiate.main, body, route="handoff/initiate", params=params, headers=headers)


def action(body: bytes | dict[str, Any], *, jwt: str | None = None, headers: dict[str, str] | None = None) -> func.HttpResponse:
    import handoff_action

    all_headers = dict(headers or {})
    if jwt is not None:
        all_headers["Authorization"] = f"Bearer {jwt}"
    return post(handoff_action.main, body, route="handoff/action", headers=all_headers)


def body_json(response: func.HttpResponse) -> Any:
    return json.loads(response.get_body())


def invoke(token: str, *, service_url: str, **changes: Any) -> dict[str, Any]:
    """The Teams handoff/action invoke fixture carrying `token`, addressed to the loopback connector."""
    activity = copy.deepcopy(fixture(INVOKE))
    activity["value"] = {"continuation": token}
    activity["serviceUrl"] = service_url
    activity.update(changes)
    return activity


def error_of(response: func.HttpResponse) -> dict[str, str]:
    body = body_json(response)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]
