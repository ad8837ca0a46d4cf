"""Building requests the way the Functions host does, and payloads from the field fixtures."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any, Callable

import azure.functions as func

from devtools.botframework import APP_ID, BotFramework, unsigned_jwt

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


# --------------------------------------------------------------------------------------------------
# The live conversation: Teams activities after the link, and signed hub calls


def teams_activity(type_: str, *, service_url: str, conversation_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """An activity Teams sends in the user's 1:1 chat with the bot (from/recipient/conversation of the fixture)."""
    import uuid

    activity = copy.deepcopy(fixture(INVOKE))
    for name in ("name", "value", "replyToId", "localTimestamp", "rawTimestamp", "rawLocalTimestamp"):
        activity.pop(name, None)
    activity.update(type=type_, id=f"1:{uuid.uuid4().hex}", serviceUrl=service_url)
    if conversation_id is not None:
        activity["conversation"]["id"] = conversation_id
    activity.update(changes)
    return activity


def user_message(text: str, *, service_url: str, conversation_id: str | None = None, **changes: Any) -> dict[str, Any]:
    return teams_activity("message", service_url=service_url, conversation_id=conversation_id, text=text, textFormat="plain", **changes)


def hub_call(
    handoff_id: str,
    event: dict[str, Any] | bytes,
    *,
    secret: str | None,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
    route_handoff_id: str | None = None,
) -> func.HttpResponse:
    """A hub call to handoff_hub, signed with `secret` (Standard Webhooks, as a hub's library would sign it)."""
    import time
    import uuid

    import handoff_hub
    from shared.webhooks import WebhookSecret, sign

    if isinstance(event, bytes):
        body = event
    else:
        body = json.dumps({"handoffId": handoff_id, **event}).encode()
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if timestamp is None else timestamp
    all_headers = {"Content-Type": "application/json", "webhook-id": webhook_id, "webhook-timestamp": str(stamp)}
    if secret is not None:
        all_headers["webhook-signature"] = sign([WebhookSecret(secret)], webhook_id, stamp, body)
    all_headers.update(headers or {})
    route_id = handoff_id if route_handoff_id is None else route_handoff_id
    request = func.HttpRequest(
        method="POST",
        url=f"http://localhost:7071/api/handoffs/{route_id}/events",
        headers=all_headers,
        params={},
        route_params={"handoffId": route_id},
        body=body,
    )
    return handoff_hub.main(request)


def run_concurrently(calls: list[Callable[[], Any]], *, timeout: float = 60.0) -> list[Any]:
    """Start every call at once (a barrier), wait for all, return their results in order; exceptions re-raised."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(len(calls))

    def start(call: Callable[[], Any]) -> Any:
        barrier.wait(timeout)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(start, call) for call in calls]
        return [future.result(timeout) for future in futures]


def connect_user(botframework: Any, *, event: dict[str, Any] | bytes | None = None, conversation_id: str | None = None) -> str:
    """Record a handoff and redeem its link in Teams, as a user opening the deep link; returns the handoff id."""
    created = initiate(event if event is not None else fixture_bytes(ACTIVITY_SET))
    assert created.status_code in (200, 201), created.get_body()
    body = body_json(created)
    changes = {"conversation": {**fixture(INVOKE)["conversation"], "id": conversation_id}} if conversation_id else {}
    redeemed = action(invoke(body["continuationToken"], service_url=botframework.service_url, **changes), jwt=botframework.jwt())
    assert redeemed.status_code == 200, redeemed.get_body()
    return body["handoffId"]


def hub_events(hub: Any, path: str) -> list[dict[str, Any]]:
    """The events the hub accepted (2xx), in the order it received them."""
    return [r.json() for r in hub.requests_to(path, "POST") if r.status and 200 <= r.status < 300]


# --------------------------------------------------------------------------------------------------
# What the engagement hub received, checked as a hub would (the Standard Webhooks library), and what is stored


def verify_hub_event(recorded: Any, secret: str) -> dict[str, Any]:
    """One POST the hub stand-in recorded, verified with the `standardwebhooks` package as a hub would do it;
    raises `standardwebhooks.webhooks.WebhookVerificationError` if the signature does not hold."""
    from standardwebhooks import Webhook

    headers = {name: recorded.header(name) or "" for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    return Webhook(secret).verify(recorded.body, headers)


def verified_hub_events(server: Any, path: str, secret: str) -> list[tuple[str, dict[str, Any]]]:
    """(webhook-id, verified event) of every POST the hub accepted (2xx), in the order they arrived."""
    accepted = [r for r in server.requests_to(path, "POST") if r.status is not None and 200 <= r.status < 300]
    return [(r.header("webhook-id"), verify_hub_event(r, secret)) for r in accepted]


def stored_rows(*tables: Any) -> list[dict[str, Any]]:
    """Every row of these raw table clients (tables never created count as empty)."""
    from azure.core.exceptions import ResourceNotFoundError

    rows: list[dict[str, Any]] = []
    for table in tables:
        try:
            rows.extend(dict(row) for row in table.list_entities())
        except ResourceNotFoundError:
            pass
    return rows


# --------------------------------------------------------------------------------------------------
# Redemptions by many users, and forged JWTs (shared by the action and reliability tests)


def redeem(botframework: Any, token: str, **changes: Any) -> func.HttpResponse:
    activity = invoke(token, service_url=botframework.service_url, **changes)
    return action(activity, jwt=botframework.jwt())


def in_chat(conversation_id: str, **changes) -> dict:
    """Invoke fields for another Teams chat (`conversation`), e.g. the 1:1 chat of another user."""
    return {"conversation": {**fixture(INVOKE)["conversation"], "id": conversation_id, **changes}}


def as_user(number: int) -> dict:
    """Invoke fields of another user in that user's own 1:1 chat with the bot."""
    user = {"id": f"29:user-{number}", "aadObjectId": f"00000000-0000-0000-0000-{number:012d}", "name": f"User {number}"}
    return {"from": user, **in_chat(f"a:chat-of-user-{number}")}


def hs256_with_public_key(botframework: BotFramework) -> str:
    from cryptography.hazmat.primitives import serialization

    public_pem = botframework.keys["main"].private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    def part(obj: dict) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=")
    now = int(time.time())
    signing_input = part({"alg": "HS256", "typ": "JWT", "kid": "key-main"}) + b"." + part(
        {"iss": "https://api.botframework.com", "aud": APP_ID, "exp": now + 600, "serviceurl": botframework.service_url}
    )
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


FORGED = {
    "wrong audience": lambda bf: bf.jwt(claims={"aud": "some-other-bot"}),
    "wrong issuer": lambda bf: bf.jwt(claims={"iss": "https://sts.windows.net/evil/"}),
    "expired beyond leeway": lambda bf: bf.jwt(issued_offset=-4000, lifetime=3600 - 310),
    "not yet valid beyond leeway": lambda bf: bf.jwt(issued_offset=400),
    "no exp": lambda bf: bf.jwt(omit=("exp",)),
    "unknown key": lambda bf: bf.jwt(key="unpublished"),
    "alg none": lambda bf: unsigned_jwt({"iss": "https://api.botframework.com", "aud": APP_ID, "exp": int(time.time()) + 600, "serviceurl": bf.service_url}, {"alg": "none", "kid": "key-main"}),
    "HS256 with the public key": hs256_with_public_key,
    "missing serviceurl": lambda bf: bf.jwt(omit=("serviceurl",)),
    "mismatched serviceurl": lambda bf: bf.jwt(service_url="https://smba.trafficmanager.net/emea/"),
    "key does not endorse msteams": lambda bf: bf.jwt(key="other-channel"),
    "signature of another key": lambda bf: bf.jwt()[:-20] + bf.jwt(key="plain")[-20:],
}


# --------------------------------------------------------------------------------------------------
# Running the project's scripts as a user would, in a sandbox


SANDBOX_NOT_LINKED = {"scripts", ".demo", "local.settings.json", ".azurite", ".git", ".pytest_cache", ".hypothesis"}


def script_sandbox(root: Path) -> Path:
    """A copy of scripts/ beside links to the rest of the project: what the scripts write (.demo/, .azurite/,
    local.settings.json) is the sandbox's own, so a developer's files and running stack are never touched."""
    project = FIXTURES.parent.parent
    (root / "scripts").mkdir(parents=True)
    for entry in project.iterdir():
        if entry.name not in SANDBOX_NOT_LINKED:
            (root / entry.name).symlink_to(entry)
    for script in (project / "scripts").iterdir():
        if script.suffix in (".sh", ".py"):
            (root / "scripts" / script.name).write_bytes(script.read_bytes())
    return root
