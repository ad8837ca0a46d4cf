"""The whole handoff on one machine, over real HTTP, with the real code paths.

Starts Azurite, the function app (`func start` when Core Tools is on the PATH, the local runner
otherwise), a second app instance with a 2-second token lifetime (for the expiry step), and loopback
stand-ins for the engagement hub and the Bot Framework (OpenID/JWKS with a key made for this run, the
token endpoint, the Bot Connector). Then walks through the flow step by step, checking each outcome, and
exits 0 only if every step behaved as the contract says: the handoff, the link redeemed in Teams, then the
live conversation (the hub's calls signed with the standardwebhooks package, the user's messages relayed, a
hub outage recovered by the sweeper, the ends of a chat).

    python scripts/demo.py             walk through the flow, then stop everything
    python scripts/demo.py --serve     start everything and keep it running for curl (see README)
    python scripts/demo.py --serve --port 7072     the same, with the app on another port than 7071

Ctrl+C, or `kill <PID>` (SIGTERM), stops everything it started and removes .demo/. The walkthrough is the list
returned by `Walkthrough.steps()`: add a step there.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import IO, Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import httpx  # noqa: E402

from devtools.botframework import APP_ID, APP_PASSWORD, BotFramework  # noqa: E402
from devtools.loopback import Answer, Azurite, LoopbackServer, Recorded, free_port  # noqa: E402

FIXTURE_INITIATE = PROJECT / "tests" / "fixtures" / "copilot-studio-handoff-initiate.activityset.json"
FIXTURE_ACTION = PROJECT / "requests" / "action.json"
USER_OBJECT_ID = "57162b23-ae6f-4e95-9774-27f7cb019864"  # the Teams user of the invoke fixture
HUB_PATH = "/hooks/handoff"
DEMO_DIR = PROJECT / ".demo"
TABLE_PREFIX = "demo"  # HANDOFF_TABLE_PREFIX of the demo's app instances
RECORD_FIELDS = ("conversationId", "state", "connected", "expiresAt", "hubStatus", "boundUserId", "transcriptBytes")
DEFAULT_SERVE_PORT = 7071
APP_START_SECONDS = 60
# The sweeper of the demo's main instance runs every 2 seconds and retries a pending hub event 1 s after the
# failure (doubling), so that a delivery left by a hub outage completes within the walkthrough; the short-lived
# instance's sweeper runs once a year (Jan 1st, midnight), so that every sweep line in the output is the main one's.
SWEEP_SCHEDULE = "*/2 * * * * *"
HUB_RETRY_SECONDS = 1
IDLE_SWEEP_SCHEDULE = "0 0 0 1 1 *"
SWEEP_WAIT_SECONDS = 20  # how long the walkthrough waits for the sweeper to deliver what the hub missed
AGENT = "Dana"
# A well-formed activity without a handoff.initiate: this app answers 204 and writes nothing; another program
# holding the port would not, which is how the demo knows the app that answers is its own.
PROBE_BODY = b'{"type": "message", "id": "demo-probe"}'


class StartError(Exception):
    """Something the demo needs could not start; the message says what, on which port, and what to do."""


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def port_taken_message(port: int) -> str:
    other = port + 1 if port < 65535 else DEFAULT_SERVE_PORT + 1
    return (
        f"port {port} is already taken by another program (scripts/run.sh, another demo, ...), so the app cannot "
        f"serve there. Stop that program, or pick another port: scripts/demo.sh --serve --port {other}"
    )


class Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def head(self, text: str) -> str:
        return self._wrap("1;36", text)

    def ok(self, text: str) -> str:
        return self._wrap("32", text)

    def bad(self, text: str) -> str:
        return self._wrap("1;31", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


class Stack:
    """Everything the demo runs, started in order by `start()` and stopped in reverse by `stop()`, which also
    stops whatever a failed or interrupted `start()` left running."""

    def __init__(self, *, app_port: int, log: IO[bytes]) -> None:
        self.hub_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.app_port = app_port
        self.log = log
        self.azurite: Azurite | None = None
        self.hub: LoopbackServer | None = None
        self.bot: BotFramework | None = None
        self.processes: list[subprocess.Popen[bytes]] = []
        self.hub_down = False  # the hub stand-in answers events 503 while True (POST /_down, /_up)
        self.app_url = ""
        self.short_lived_app_url = ""

    def start(self) -> Stack:
        if listening(self.app_port):
            raise StartError(port_taken_message(self.app_port))
        self.azurite = Azurite()
        try:
            self.azurite.start()
        except (RuntimeError, TimeoutError) as exc:
            raise StartError(f"Azurite (Table Storage) could not start on 127.0.0.1:{self.azurite.port}: {exc}") from None
        self.hub = LoopbackServer("hub")
        hub = self.hub
        hub.route(HUB_PATH, self._hub_answer)
        hub.route("/_received", lambda request: Answer(200, [r.json() for r in self.hub_deliveries()]))
        hub.route("/_down", lambda request: self._set_hub_down(True))
        hub.route("/_up", lambda request: self._set_hub_down(False))
        self.bot = BotFramework()
        bot = self.bot
        bot.connector.route("/_sent", lambda request: Answer(200, bot.sent_activities()))
        self.app_url = self._start_app(self.app_port, ttl=900, sweep_schedule=SWEEP_SCHEDULE)
        self.short_lived_app_url = self._start_app(free_port(), ttl=2, sweep_schedule=IDLE_SWEEP_SCHEDULE)
        return self

    def hub_deliveries(self, handoff_id: str | None = None) -> list[Recorded]:
        """The events the hub stand-in accepted (answered 2xx), in the order they arrived; attempts it answered 503
        while down are left out."""
        assert self.hub is not None
        accepted = [r for r in self.hub.requests_to(HUB_PATH, "POST") if r.status is not None and 200 <= r.status < 300]
        return [r for r in accepted if handoff_id is None or r.json().get("handoffId") == handoff_id]

    def _hub_answer(self, request: Recorded) -> Answer:
        if self.hub_down:
            return Answer(503, {"error": "the hub stand-in is down (POST /_up brings it back)"})
        return Answer(202, {"accepted": True})

    def _set_hub_down(self, down: bool) -> Answer:
        self.hub_down = down
        return Answer(200, {"hub": "down: events are answered 503" if down else "up: events are answered 202"})

    def app_output(self, start: int = 0) -> str:
        """What the app instances printed (their log lines) from byte `start` on. Read with pread, so that the
        file offset the instances write at is left alone."""
        fd = self.log.fileno()
        size = os.fstat(fd).st_size
        return os.pread(fd, max(0, size - start), start).decode(errors="replace") if size > start else ""

    def app_output_size(self) -> int:
        return os.fstat(self.log.fileno()).st_size

    def settings(self, ttl: int, sweep_schedule: str = SWEEP_SCHEDULE) -> dict[str, str]:
        """Every setting of the contract, explicitly: a developer's local.settings.json must not change the demo."""
        assert self.azurite is not None and self.hub is not None and self.bot is not None
        return {
            "HANDOFF_STORAGE_CONNECTION": self.azurite.connection_string,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "HANDOFF_TABLES_ENDPOINT": "",
            "HANDOFF_TABLE_PREFIX": TABLE_PREFIX,
            "MicrosoftAppId": APP_ID,
            "MicrosoftAppPassword": APP_PASSWORD,
            "MicrosoftAppTenantId": "",
            "MicrosoftAppType": "MultiTenant",
            "HANDOFF_BOT_ID": APP_ID,
            "HANDOFF_TOKEN_TTL_SECONDS": str(ttl),
            "HANDOFF_HUB_URL": self.hub.url + HUB_PATH,
            "HANDOFF_HUB_SECRET": self.hub_secret,
            "HANDOFF_HUB_SECRET_PREVIOUS": "",
            "HANDOFF_HUB_RETRY_SECONDS": str(HUB_RETRY_SECONDS),
            "HANDOFF_HUB_RETRY_HOURS": "24",
            "HANDOFF_RETENTION_DAYS": "30",
            "HANDOFF_SWEEP_SCHEDULE": sweep_schedule,
            "HANDOFF_SWEEP_BATCH": "500",
            "BOT_OPENID_METADATA_URL": self.bot.metadata_url,
            "BOT_TOKEN_URL": self.bot.token_url,
            "HANDOFF_ALLOWED_SERVICE_URL_HOSTS": "127.0.0.1",
            "HANDOFF_AUTH_DISABLED": "false",
            "HANDOFF_MAX_BODY_BYTES": "4000000",
        }

    def _start_app(self, port: int, *, ttl: int, sweep_schedule: str) -> str:
        """Starts an app instance and returns its URL once it answers as this app; StartError otherwise."""
        if listening(port):
            raise StartError(port_taken_message(port))
        if shutil.which("func"):
            command = ["func", "start", "--port", str(port)]
        else:
            command = [sys.executable, str(PROJECT / "scripts" / "local_runner.py"), "--port", str(port)]
        # Its own session: stopping it stops its whole tree (func start's worker too), and the demo alone decides when.
        process = subprocess.Popen(
            command, cwd=PROJECT, env={**os.environ, **self.settings(ttl, sweep_schedule)}, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + APP_START_SECONDS
        last = "nothing listens"
        with httpx.Client(timeout=5, trust_env=False) as http:
            while True:
                if process.poll() is not None:
                    raise StartError(f"the function app exited (status {process.returncode}) before it served on port {port}")
                if listening(port):
                    try:
                        answer = http.post(f"{url}/api/handoff/initiate", content=PROBE_BODY, headers={"Content-Type": "application/json"})
                    except httpx.HTTPError as exc:
                        last = f"{type(exc).__name__}"
                    else:
                        if answer.status_code == 204:
                            return url
                        last = f"POST /api/handoff/initiate answered {answer.status_code} {answer.text[:200]!r}, not this app's 204"
                        if answer.status_code == 500 and b"configuration_error" in answer.content:
                            raise StartError(f"the function app on port {port} refuses its settings: {answer.text[:300]}")
                if time.monotonic() >= deadline:
                    raise StartError(
                        f"the app on port {port} did not answer as this function app within {APP_START_SECONDS} s ({last}); "
                        f"if another program holds the port, stop it or pick another: scripts/demo.sh --serve --port {port + 1}"
                    )
                time.sleep(0.2)

    @property
    def runtime(self) -> str:
        return "func start (Azure Functions Core Tools)" if shutil.which("func") else "scripts/local_runner.py"

    def stop(self) -> None:
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(5)
        self.processes.clear()
        if self.bot is not None:
            self.bot.stop()
            self.bot = None
        if self.hub is not None:
            self.hub.stop()
            self.hub = None
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


class Redemption(str, Enum):
    """What the user should see after an invoke, per the contract."""

    CONTINUED = "continued"
    ALREADY_CONNECTED = "already_connected"
    CANNOT_CONTINUE = "cannot_continue"


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[], list[str]]  # the problems seen; empty when the step behaved as the contract says
    required: bool = False  # the later steps depend on it: stop the walkthrough if it fails


class Walkthrough:
    def __init__(self, stack: Stack, style: Style) -> None:
        self.stack = stack
        self.style = style
        self.http = httpx.Client(timeout=20, trust_env=False)
        self.results: list[tuple[str, bool]] = []
        self.initiated: dict[str, Any] = {}

    def step(self, title: str, run: Callable[[], list[str]]) -> bool:
        print(self.style.head(f"\n━━ {title} ━━"))
        started = time.perf_counter()
        try:
            problems = run()
        except Exception as exc:  # noqa: BLE001 - any failure is a failed step, reported plainly
            problems = [f"{type(exc).__name__}: {exc}"]
        elapsed = (time.perf_counter() - started) * 1000
        ok = not problems
        self.results.append((title, ok))
        for problem in problems:
            print(self.style.bad(f"   ✘ {problem}"))
        print((self.style.ok("   ✔ as expected") if ok else self.style.bad("   ✘ NOT as expected")) + self.style.dim(f"  ({elapsed:.0f} ms)"))
        return ok

    def show(self, label: str, value: object) -> None:
        print(f"   {label:<15} {value}")

    def post(self, url: str, body: bytes, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        response = self.http.post(url, content=body, headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, **kwargs)
        print(f"   ← {response.status_code} {response.reason_phrase}, {len(response.content)} bytes, in {(time.perf_counter() - started) * 1000:.0f} ms")
        return response

    def user_saw(self, sent: list[dict[str, Any]], *, nothing: str = "nothing") -> None:
        """Prints the activities the bot sent the user (what the Bot Connector stand-in received), as Teams shows them."""
        print("   the user received in Teams:" if sent else self.style.dim(f"   the user received in Teams: {nothing}"))
        for message in sent:
            if message["type"] == "typing":
                print(self.style.dim("     … (typing)"))
                continue
            for index, line in enumerate((message.get("text") or "").splitlines()):
                print(f"     {'💬' if index == 0 else '  '} {line}")
            for attachment in message.get("attachments") or []:
                actions = (attachment.get("content") or {}).get("actions") or []
                print(f"     ▣ {attachment.get('contentType', 'attachment')}: " + " ".join(f"[{a.get('title')}]" for a in actions))

    def sent_since(self, before: int) -> list[dict[str, Any]]:
        assert self.stack.bot is not None
        return self.stack.bot.sent_activities()[before:]

    def sent_count(self) -> int:
        assert self.stack.bot is not None
        return len(self.stack.bot.sent_activities())

    def verifies(self, request: Recorded) -> bool:
        """The hub's check of one of our events: the standardwebhooks package, with the shared secret."""
        from standardwebhooks import Webhook, WebhookVerificationError

        try:
            Webhook(self.stack.hub_secret).verify(request.body, request.headers)
        except WebhookVerificationError:
            return False
        return True

    def show_event(self, request: Recorded) -> list[str]:
        """Prints one event the hub accepted; returns what is wrong with its signature or webhook-id."""
        event = request.json()
        verified = self.verifies(request)
        detail = {
            "handoff.message": lambda: repr(event.get("text")),
            "handoff.ended": lambda: f"reason {event.get('reason')}",
            "handoff.connected": lambda: f"user {(event.get('user') or {}).get('aadObjectId')}",
        }.get(event["type"], lambda: "")()
        mark = self.style.ok("✔ verifies") if verified else self.style.bad("✘ DOES NOT VERIFY")
        self.show(f"seq {event['seq']}", f"{event['type']:<17} webhook-id: {request.header('webhook-id')}  {detail}  {mark}")
        problems = [] if verified else [f"the signature of seq {event['seq']} does not verify with HANDOFF_HUB_SECRET"]
        # the contract: handoff.requested is <handoffId>, every later event <handoffId>:<seq>
        expected = event["handoffId"] if event["type"] == "handoff.requested" else f"{event['handoffId']}:{event['seq']}"
        if request.header("webhook-id") != expected:
            problems.append(f"webhook-id {request.header('webhook-id')!r} of {event['type']} is not {expected!r}")
        return problems

    def last_seq(self, handoff_id: str) -> int:
        return max((r.json()["seq"] for r in self.stack.hub_deliveries(handoff_id)), default=0)

    def hub_says(self, event: dict[str, Any], *, webhook_id: str | None = None) -> tuple[httpx.Response, list[dict[str, Any]]]:
        """The hub stand-in calls the app as a hub would: a Standard Webhooks message signed with the standardwebhooks
        package. Returns the app's answer and what the user was sent meanwhile."""
        from standardwebhooks import Webhook

        handoff_id = self.initiated["handoffId"]
        body = json.dumps({"handoffId": handoff_id, **event})
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        now = datetime.now(timezone.utc)
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(self.stack.hub_secret).sign(webhook_id, now, body),
        }
        print(f"   → POST /api/handoffs/{handoff_id}/events  webhook-id: {webhook_id}  (signed by standardwebhooks' Webhook.sign)")
        print(self.style.dim(f"     {body}"))
        before = self.sent_count()
        response = self.post(f"{self.stack.app_url}/api/handoffs/{handoff_id}/events", body.encode(), headers=headers)
        if response.content:
            print(self.style.dim(f"     {response.text}"))
        sent = self.sent_since(before)
        self.user_saw(sent)
        return response, sent

    def hub_answer_problems(self, response: httpx.Response, *, state: str) -> list[str]:
        """The contract's 200 to a hub call passed on to a connected user."""
        if response.status_code != 200:
            return [f"expected 200, got {response.status_code}: {response.text[:300]}"]
        answer = response.json()
        problems = []
        if answer.get("state") != state or answer.get("connected") is not True or answer.get("delivered") is not True:
            problems.append(f"expected state {state!r}, connected and delivered, the answer says {answer}")
        if not answer.get("activityIds") and state != "ended":
            problems.append("the answer lists no activityIds")
        return problems

    def user_writes(
        self, text: str | None, *, value: dict[str, Any] | None = None, activity: dict[str, Any] | None = None
    ) -> tuple[httpx.Response, list[dict[str, Any]], dict[str, Any]]:
        """Teams posts a `message` activity the user wrote in the chat (the invoke fixture's user, chat and bot), with
        this run's JWT. Returns the app's answer, what the user was sent meanwhile, and the activity (to send again)."""
        assert self.stack.bot is not None
        if activity is None:
            activity = json.loads(FIXTURE_ACTION.read_text())
            for name in ("name", "value", "replyToId", "localTimestamp", "rawTimestamp", "rawLocalTimestamp"):
                activity.pop(name, None)
            stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            activity.update(type="message", id=f"1:{uuid.uuid4().hex}", timestamp=stamp, serviceUrl=self.stack.bot.service_url)
            if text is not None:
                activity.update(text=text, textFormat="plain")
            if value is not None:
                activity["value"] = value
        what = f"{activity['text']!r}" if activity.get("text") else f"value {json.dumps(activity.get('value'))}"
        print(f"   → POST /api/handoff/action  (message {activity['id'][:14]}…: {what}; Authorization: Bearer <JWT>)")
        before = self.sent_count()
        response = self.post(f"{self.stack.app_url}/api/handoff/action", json.dumps(activity).encode(),
                             headers={"Authorization": f"Bearer {self.stack.bot.jwt()}"})
        sent = self.sent_since(before)
        return response, sent, activity

    @staticmethod
    def texts(sent: list[dict[str, Any]]) -> list[str]:
        return [m.get("text") or "" for m in sent if m["type"] == "message"]

    @staticmethod
    def empty_200(response: httpx.Response) -> list[str]:
        if response.status_code != 200 or response.content:
            return [f"expected 200 with an empty body, got {response.status_code} {response.text[:200]}"]
        return []

    def wait_for_deliveries(self, handoff_id: str, count: int, *, seconds: float) -> list[Recorded]:
        """The hub's accepted events of a handoff once there are `count` (or whatever came within `seconds`)."""
        deadline = time.monotonic() + seconds
        while True:
            delivered = self.stack.hub_deliveries(handoff_id)
            if len(delivered) >= count or time.monotonic() >= deadline:
                return delivered
            time.sleep(0.1)

    def partition(self, handoff_id: str) -> dict[str, dict[str, Any]]:
        """Every row of the handoff's partition, by RowKey, from the demo's tables."""
        from azure.data.tables import TableServiceClient

        assert self.stack.azurite is not None
        service = TableServiceClient.from_connection_string(self.stack.azurite.connection_string)
        rows: dict[str, dict[str, Any]] = {}
        for table in (t.name for t in service.list_tables() if t.name.startswith(TABLE_PREFIX)):
            client = service.get_table_client(table)
            rows.update({row["RowKey"]: dict(row) for row in client.query_entities("PartitionKey eq @pk", parameters={"pk": handoff_id})})
        return rows

    # -- the steps ---------------------------------------------------------------------------------

    def initiate(self) -> list[str]:
        body = FIXTURE_INITIATE.read_bytes()
        url = f"{self.stack.app_url}/api/handoff/initiate"
        print(f"   → POST {url}?userId={USER_OBJECT_ID}")
        print(self.style.dim(f"     {FIXTURE_INITIATE.relative_to(PROJECT)}: the Copilot Studio handoff.initiate event, its transcript and va_* context"))
        response = self.post(url, body, params={"userId": USER_OBJECT_ID})
        if response.status_code != 201:
            return [f"expected 201, got {response.status_code}: {response.text[:300]}"]
        result = response.json()
        self.initiated = result
        self.show("handoffId", result["handoffId"])
        self.show("expiresAt", result["expiresAt"])
        self.show("hub.status", result["hub"]["status"])
        self.show("deepLink", result["deepLink"])
        action = result["card"]["actions"][0]
        self.show("card", f"Adaptive Card {result['card']['version']}: \"{result['card']['body'][1]['text']}\"")
        self.show("", f"[{action['title']}] → {action['type']} to the deep link")
        problems = []
        if result["hub"]["status"] != "delivered":
            problems.append(f"hub status {result['hub']['status']!r}, expected 'delivered'")
        if action["url"] != result["deepLink"] or not result["deepLink"].startswith("https://teams.microsoft.com/l/chat/0/0?users=28:"):
            problems.append("the card does not open the Teams deep link")
        return problems

    def hub_received(self) -> list[str]:
        requests = self.stack.hub.requests_to(HUB_PATH, "POST")
        if len(requests) != 1:
            return [f"expected one delivery, the hub got {len(requests)}"]
        request: Recorded = requests[0]
        event = request.json()
        # Standard Webhooks: verified with the standardwebhooks package, as a hub would
        from standardwebhooks import Webhook, WebhookVerificationError

        try:
            Webhook(self.stack.hub_secret).verify(request.body, request.headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        signature = request.header("webhook-signature") or ""
        self.show("request", f"POST {HUB_PATH}  webhook-id: {request.header('webhook-id')}  webhook-timestamp: {request.header('webhook-timestamp')}")
        self.show("signature", f"{signature[:23]}…  " + (self.style.ok("verifies with HANDOFF_HUB_SECRET") if verified else self.style.bad("DOES NOT VERIFY")))
        self.show("event", f"{event['type']} · conversation {event['conversation']['id']} · user {event['conversation'].get('user', {}).get('name')}")
        context = event["context"]
        self.show("context", ", ".join(f"{k}={v!r}" for k, v in context.items() if k in ("va_BotName", "va_LastTopic", "va_LastPhrase", "va_AgentMessage")))
        self.show("transcript", f"{len(event['transcript']['activities'])} activities, as the bot sent them")
        problems = []
        if not verified:
            problems.append("the signature does not verify")
        if request.header("webhook-id") != self.initiated.get("handoffId"):
            problems.append("webhook-id is not the handoff id")
        return problems

    def storage(self) -> list[str]:
        """What the app keeps, found by the handoff's partition and the token's hash in every table of the demo's
        prefix (so this step reads any table layout): a record, compressed blobs, the token only as its SHA-256."""
        from azure.data.tables import TableServiceClient

        assert self.stack.azurite is not None
        service = TableServiceClient.from_connection_string(self.stack.azurite.connection_string)
        handoff_id = self.initiated["handoffId"]
        token = self.initiated["continuationToken"]
        token_hash = hashlib.sha256(token.encode()).hexdigest()
        every_row: list[dict[str, Any]] = []
        hash_keyed = False
        for table in sorted(t.name for t in service.list_tables() if t.name.startswith(TABLE_PREFIX)):
            rows = [dict(row) for row in service.get_table_client(table).list_entities()]
            every_row += rows
            mine = [r for r in rows if r["PartitionKey"] == handoff_id or token_hash in r["PartitionKey"] + r["RowKey"]]
            if not mine:
                continue
            print(self.style.dim(f"   table {table}:"))
            for row in sorted(mine, key=lambda r: (r["RowKey"] != "handoff", r["RowKey"])):
                key = row["RowKey"] if row["PartitionKey"] == handoff_id else row["PartitionKey"]
                if token_hash in key:
                    hash_keyed = True
                    self.show("token", f"{key.replace(token_hash, token_hash[:16] + '…')} (SHA-256 of the token)")
                elif row["RowKey"] == "handoff":
                    fields = {k: row[k] for k in RECORD_FIELDS if k in row}
                    self.show("handoff", ", ".join(f"{k}={v}" for k, v in fields.items()))
                else:
                    size = sum(len(v) for v in row.values() if isinstance(v, (bytes, bytearray)))
                    self.show(key[:24], f"{size} bytes, zlib-compressed" if size else ", ".join(k for k in row if k not in ("PartitionKey", "RowKey"))[:90])
        problems = []
        if not any(r["PartitionKey"] == handoff_id and r["RowKey"] == "handoff" for r in every_row):
            problems.append("no handoff record")
        if any(token in repr(row) for row in every_row):
            problems.append("the plaintext token is stored")
        if not hash_keyed:
            problems.append("no row is keyed by the token's SHA-256")
        return problems

    def redeem(self, token: str, *, expect: Redemption, app_url: str | None = None) -> list[str]:
        assert self.stack.bot is not None
        activity = json.loads(FIXTURE_ACTION.read_text())
        activity["value"]["continuation"] = token
        activity["serviceUrl"] = self.stack.bot.service_url
        jwt = self.stack.bot.jwt()
        url = f"{app_url or self.stack.app_url}/api/handoff/action"
        before = len(self.stack.bot.sent_activities())
        print(f"   → POST {url}  (invoke handoff/action, Authorization: Bearer <JWT signed with this run's OpenID key>)")
        response = self.post(url, json.dumps(activity).encode(), headers={"Authorization": f"Bearer {jwt}"})
        sent = self.stack.bot.sent_activities()[before:]
        self.user_saw(sent)
        problems = []
        if response.status_code != 200 or response.content:
            problems.append(f"expected 200 with an empty body, got {response.status_code} {response.text[:200]}")
        kinds = [m["type"] for m in sent]
        texts = " ".join(m.get("text") or "" for m in sent)
        if expect is Redemption.CONTINUED:
            # the contract: a message that the chat continues, typing, the context, then where the agent side stands
            if kinds[:2] != ["message", "typing"] or len(kinds) < 4 or set(kinds[2:]) != {"message"}:
                problems.append(f"expected the continuation (message, typing, the context, the agent's status), the user got {kinds}")
            if "An agent will join shortly" not in texts and "is ready for you" not in texts:
                problems.append("the continuation does not say where the agent side stands")
        elif expect is Redemption.ALREADY_CONNECTED:
            if kinds != ["message"] or "already connected" not in texts:
                problems.append(f"expected one message saying the user is already connected, the user got {kinds}")
        elif kinds != ["message"] or "start a new conversation" not in texts:
            problems.append("expected one message telling the user to start a new conversation")
        return problems

    def expired(self) -> list[str]:
        event = json.loads(FIXTURE_INITIATE.read_text())
        event["activities"][0]["id"] += "-expiry-demo"
        print(f"   → POST {self.stack.short_lived_app_url}/api/handoff/initiate  (a second app instance on the same storage, HANDOFF_TOKEN_TTL_SECONDS=2)")
        print(self.style.dim(
            f"     the fixture of step 1 with another activity id ({event['activities'][0]['id']}): a new handoff, so 201 Created,\n"
            "     not the 200 a repeat of step 1's event would get; unbound (no userId)"
        ))
        response = self.post(f"{self.stack.short_lived_app_url}/api/handoff/initiate", json.dumps(event).encode())
        if response.status_code != 201:
            return [f"expected 201, got {response.status_code}"]
        self.show("handoffId", f"{response.json()['handoffId']} (another handoff than step 1's)")
        self.show("expiresAt", response.json()["expiresAt"])
        print(self.style.dim("   waiting 3 s for the link to expire…"))
        time.sleep(3)
        handoff_id = response.json()["handoffId"]
        problems = self.redeem(response.json()["continuationToken"], expect=Redemption.CANNOT_CONTINUE)
        # The sweeper ends a handoff whose links expired unused and tells the hub (seq 2, after handoff.requested).
        delivered = self.wait_for_deliveries(handoff_id, 2, seconds=10)
        print("   the hub received (handoff.ended from the sweeper, which ended the unused handoff):")
        for request in delivered:
            problems += self.show_event(request)
        if [(r.json()["type"], r.json().get("reason")) for r in delivered] != [("handoff.requested", None), ("handoff.ended", "expired")]:
            problems.append("expected handoff.requested then handoff.ended with reason expired")
        return problems

    # -- after the link: the live conversation -------------------------------------------------------

    def in_line(self) -> list[str]:
        response, sent = self.hub_says({"type": "queued", "position": 2, "waitSeconds": 180})
        problems = self.hub_answer_problems(response, state="requested")
        expected = ["You're number 2 in line. Expected wait: about 3 minutes."]
        if self.texts(sent) != expected:
            problems.append(f"expected the user to see {expected}, they saw {self.texts(sent)}")
        return problems

    def agent_joins(self) -> list[str]:
        response, sent = self.hub_says({"type": "accepted", "agent": {"name": AGENT}})
        problems = self.hub_answer_problems(response, state="accepted")
        if self.texts(sent) != [f"{AGENT} has joined the conversation."]:
            problems.append(f"expected \"{AGENT} has joined the conversation.\", the user saw {self.texts(sent)}")
        response, sent = self.hub_says({"type": "typing"})
        if response.status_code != 200 or [m["type"] for m in sent] != ["typing"]:
            problems.append(f"typing: expected 200 and a typing indicator, got {response.status_code} and {[m['type'] for m in sent]}")
        text = "Hi, I'm Dana from the store team. On Sundays we're open 10 am to 6 pm. Anything else?"
        message = {"type": "message", "text": text, "agent": {"name": AGENT}}
        webhook_id = f"msg_{uuid.uuid4().hex}"
        response, sent = self.hub_says(message, webhook_id=webhook_id)
        problems += self.hub_answer_problems(response, state="accepted")
        if self.texts(sent) != [f"**{AGENT}:** {text}"]:
            problems.append(f"expected \"**{AGENT}:** {text}\", the user saw {self.texts(sent)}")
        print(self.style.dim("   the hub retries that call (its answer was lost, say): same webhook-id, same body, a fresh signature"))
        again, sent = self.hub_says(message, webhook_id=webhook_id)
        if again.status_code != response.status_code or again.content != response.content:
            problems.append(f"the repeat was answered {again.status_code} {again.text[:200]}, not as the first call")
        if sent:
            problems.append(f"the repeat sent the user {len(sent)} more activities")
        return problems

    def user_answers(self) -> list[str]:
        handoff_id = self.initiated["handoffId"]
        seq = self.last_seq(handoff_id) + 1
        before = len(self.stack.hub_deliveries(handoff_id))
        text = "Great, thanks! Can I pick up an online order on Sunday?"
        response, sent, activity = self.user_writes(text)
        self.user_saw(sent, nothing="nothing (the message went to the hub)")
        problems = self.empty_200(response)
        if sent:
            problems.append(f"the user was sent {self.texts(sent)}")
        new = self.stack.hub_deliveries(handoff_id)[before:]
        print("   the hub received:")
        for request in new:
            problems += self.show_event(request)
        event = new[0].json() if len(new) == 1 else {}
        if len(new) != 1 or event.get("type") != "handoff.message":
            problems.append(f"expected one handoff.message at the hub, it got {[r.json()['type'] for r in new]}")
        elif event["seq"] != seq or event["text"] != text or event["messageId"] != activity["id"]:
            problems.append(f"expected seq {seq}, the text and messageId {activity['id']}, the event has {event}")
        if event:
            user = event.get("user") or {}
            self.show("", f"messageId {event['messageId'][:14]}…  sentAt {event.get('sentAt')}  user {user.get('aadObjectId')}")
        print(self.style.dim("   Teams delivers the same activity again (it does when the bot is slow to answer):"))
        again, sent, _ = self.user_writes(None, activity=activity)
        problems += self.empty_200(again)
        later = self.stack.hub_deliveries(handoff_id)[before + len(new):]
        print(("   the hub received: nothing more" if not later else self.style.bad(f"   the hub received it again: {len(later)} more")))
        if later or sent:
            problems.append("the repeated Teams activity was relayed again")
        return problems

    def hub_outage(self) -> list[str]:
        handoff_id = self.initiated["handoffId"]
        first_seq = self.last_seq(handoff_id) + 1
        before = len(self.stack.hub_deliveries(handoff_id))
        output_start = self.stack.app_output_size()
        self.stack.hub_down = True
        print(self.style.dim("   the hub stand-in now answers every event 503 Service Unavailable"))
        problems: list[str] = []
        texts = ["Also: do you gift-wrap?", "And is parking free on Sundays?"]
        for text in texts:
            started = time.perf_counter()
            response, sent, _ = self.user_writes(text)
            elapsed = time.perf_counter() - started
            problems += self.empty_200(response)
            if sent:
                problems.append(f"the user was sent {self.texts(sent)}")
            if elapsed > 5:
                problems.append(f"the answer took {elapsed:.1f} s: the request waited on a hub that is down")
        assert self.stack.hub is not None
        refused = [r.json()["seq"] for r in self.stack.hub.requests_to(HUB_PATH, "POST") if r.status == 503 and r.json().get("handoffId") == handoff_id]
        self.show("hub attempts", f"{len(refused)} so far, all answered 503, all of seq {sorted(set(refused))} (the first event "
                                  "waiting: nothing overtakes it)")
        if not refused:
            problems.append("the app did not try the hub within the request")
        if set(refused) - {first_seq}:
            problems.append(f"events behind seq {first_seq} were posted while it was undelivered: {sorted(set(refused))}")
        rows = self.partition(handoff_id)
        record = rows.get("handoff", {})
        print("   stored, waiting for the hub (Table Storage, the handoff's partition):")
        self.show("handoff", f"nextSeq={record.get('nextSeq')} settledSeq={record.get('settledSeq')} (events up to {record.get('settledSeq')} are settled) retryAt={record.get('retryAt')}")
        waiting = []
        for key in sorted(k for k in rows if k.startswith("event.")):
            seq = int(key.split(".", 1)[1])
            if seq >= first_seq:
                payload = json.loads(rows[key].get("payload") or "{}")
                waiting.append((seq, payload.get("text")))
                self.show(key, f"{rows[key].get('type')} {payload.get('text')!r}")
        if waiting != list(zip(range(first_seq, first_seq + len(texts)), texts)):
            problems.append(f"expected events {first_seq}.. with the two messages stored in order, found {waiting}")
        if self.stack.hub_deliveries(handoff_id)[before:]:
            problems.append("the hub accepted events while it was down")
        self.stack.hub_down = False
        print(self.style.dim(f"   the hub is back (answers 202); the sweeper runs every 2 s ({SWEEP_SCHEDULE}) and retries "
                             f"{HUB_RETRY_SECONDS} s after a failure, doubling…"))
        started = time.perf_counter()
        delivered = self.wait_for_deliveries(handoff_id, before + len(texts), seconds=SWEEP_WAIT_SECONDS)[before:]
        print(f"   the hub received, {time.perf_counter() - started:.1f} s later:")
        for request in delivered:
            problems += self.show_event(request)
        got = [(r.json()["seq"], r.json().get("text")) for r in delivered]
        if got != list(zip(range(first_seq, first_seq + len(texts)), texts)):
            problems.append(f"expected seq {first_seq} and {first_seq + 1} with the two messages, in order, once; the hub accepted {got}")
        ids = [r.header("webhook-id") for r in self.stack.hub_deliveries(handoff_id)]
        if len(ids) != len(set(ids)):
            problems.append("the hub accepted an event twice")
        idle = "delivered=0 still_pending=0 failed=0 expired=0 purged=0"
        deadline = time.monotonic() + 3  # the sweep's summary line comes right after its last delivery
        while True:
            lines = [line.split("sweep: ", 1)[1] for line in self.stack.app_output(output_start).splitlines() if "sweep: delivered=" in line]
            busy = [line for line in lines if not line.startswith(idle)]
            if any(not line.startswith("delivered=0 ") for line in busy) or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        print(f"   the sweeper's log ({len(lines)} runs meanwhile; those that did something):")
        for line in busy:
            print(self.style.dim(f"     sweep: {line}"))
        if "local_runner" in self.stack.runtime and not any(not line.startswith("delivered=0 ") for line in busy):
            problems.append("no sweep line says it delivered an event")
        return problems

    def agent_ends(self) -> list[str]:
        handoff_id = self.initiated["handoffId"]
        response, sent = self.hub_says({"type": "completed"})
        problems = self.hub_answer_problems(response, state="ended")
        expected = f"{AGENT} has ended the conversation. If you need anything else, start a new conversation with the assistant."
        if self.texts(sent) != [expected]:
            problems.append(f"expected \"{expected}\", the user saw {self.texts(sent)}")
        print(self.style.dim("   later, the user writes in the same chat:"))
        before = len(self.stack.hub_deliveries(handoff_id))
        response, sent, _ = self.user_writes("Hello? One more question")
        self.user_saw(sent)
        problems += self.empty_200(response)
        expected = "There's no open conversation with an agent here. To talk to someone, start a new conversation with the assistant."
        if self.texts(sent) != [expected]:
            problems.append(f"expected the \"no open conversation\" reply, the user saw {self.texts(sent)}")
        if self.stack.hub_deliveries(handoff_id)[before:]:
            problems.append("a message after the end was relayed to the hub")
        else:
            print("   the hub received: nothing")
        return problems

    def end_chat(self) -> list[str]:
        event = json.loads(FIXTURE_INITIATE.read_text())
        event["activities"][0]["id"] += "-end-chat-demo"
        url = f"{self.stack.app_url}/api/handoff/initiate"
        print(f"   → POST {url}?userId={USER_OBJECT_ID}  (the fixture with another activity id: a second handoff)")
        response = self.post(url, json.dumps(event).encode(), params={"userId": USER_OBJECT_ID})
        if response.status_code != 201:
            return [f"expected 201, got {response.status_code}: {response.text[:300]}"]
        second = response.json()
        handoff_id = second["handoffId"]
        self.show("handoffId", f"{handoff_id} (the second handoff)")
        problems = self.redeem(second["continuationToken"], expect=Redemption.CONTINUED)
        cards = [
            action["data"]
            for message in self.stack.bot.sent_activities()
            for attachment in message.get("attachments") or []
            for action in (attachment.get("content") or {}).get("actions") or []
            if action.get("type") == "Action.Submit" and action.get("title") == "End chat"
        ]
        if not cards or cards[-1].get("handoffId") != handoff_id:
            return problems + ["the continuation has no End chat button for the second handoff"]
        print(self.style.dim("   the user presses [End chat] (Teams posts the button's data as the message's value):"))
        before = len(self.stack.hub_deliveries(handoff_id))
        response, sent, _ = self.user_writes(None, value=cards[-1])
        self.user_saw(sent)
        problems += self.empty_200(response)
        if self.texts(sent) != ["You've ended the conversation with the agent."]:
            problems.append(f"expected \"You've ended the conversation with the agent.\", the user saw {self.texts(sent)}")
        new = self.stack.hub_deliveries(handoff_id)[before:]
        print("   the hub received:")
        for request in new:
            problems += self.show_event(request)
        if [(r.json()["type"], r.json().get("reason"), r.json()["seq"]) for r in new] != [("handoff.ended", "user_ended", 3)]:
            problems.append("expected handoff.ended, reason user_ended, seq 3 (after requested and connected)")
        return problems

    def token(self) -> str:
        return self.initiated["continuationToken"]

    def steps(self) -> list[Step]:
        """The walkthrough, in order: each step prints what it sent and saw, and returns what was not as expected."""
        return [
            Step("Copilot Studio hands off: POST /api/handoff/initiate", self.initiate, required=True),
            Step("What the engagement hub received", self.hub_received),
            Step("What Table Storage holds", self.storage),
            Step("The user opens the link in Teams: POST /api/handoff/action",
                 lambda: self.redeem(self.token(), expect=Redemption.CONTINUED), required=True),
            Step("The same link, opened again in the same chat", lambda: self.redeem(self.token(), expect=Redemption.ALREADY_CONNECTED)),
            Step("The hub says the user is in line: POST /api/handoffs/{handoffId}/events", self.in_line),
            Step(f"An agent, {AGENT}, joins and writes", self.agent_joins),
            Step("The user answers in Teams: relayed to the hub as handoff.message", self.user_answers),
            Step("The hub is down while the user writes twice; the sweeper delivers once it is back", self.hub_outage),
            Step("The agent ends the chat; the user writes again", self.agent_ends),
            Step("A second handoff: the user presses End chat", self.end_chat),
            Step("An expired link", self.expired),
        ]

    def run(self) -> bool:
        steps = self.steps()
        for number, step in enumerate(steps, start=1):
            if not self.step(f"Step {number} · {step.title}", step.run) and step.required:
                print(self.style.bad(f"   the later steps need this one: stopping after step {number}"))
                break
        passed = sum(ok for _, ok in self.results)
        line = f"\ndemo: {passed} of {len(steps)} steps behaved as expected"
        print(self.style.ok(line) if passed == len(steps) else self.style.bad(line))
        return passed == len(steps)


DEMO_FILES = ("jwt", "service_url", "hub_secret", "hub_url", "connector_url")


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read (the JWT and the hub secret are credentials, if only of this run)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def serve(stack: Stack, style: Style) -> None:
    """Keeps the stack running until Ctrl+C or SIGTERM; the files of DEMO_FILES in .demo/ exist only meanwhile."""
    assert stack.bot is not None and stack.hub is not None and stack.azurite is not None
    try:
        DEMO_DIR.mkdir(exist_ok=True)
        _write_private(DEMO_DIR / "jwt", stack.bot.jwt(lifetime=3600))
        _write_private(DEMO_DIR / "hub_secret", stack.hub_secret)
        (DEMO_DIR / "service_url").write_text(stack.bot.service_url)
        (DEMO_DIR / "hub_url").write_text(stack.hub.url)
        (DEMO_DIR / "connector_url").write_text(stack.bot.connector.url)
        _serve(stack, style)
    finally:
        for name in DEMO_FILES:
            (DEMO_DIR / name).unlink(missing_ok=True)
        try:
            DEMO_DIR.rmdir()
        except OSError:  # not empty: something else of the user's is in it
            pass


def _serve(stack: Stack, style: Style) -> None:
    assert stack.bot is not None and stack.hub is not None and stack.azurite is not None
    print(style.head(f"\nEverything is running (PID {os.getpid()}); Ctrl+C or kill {os.getpid()} stops it."))
    print(f"   app (Functions)   {stack.app_url}   via {stack.runtime}")
    print(f"   Table Storage     {stack.azurite.connection_string}")
    print(f"   engagement hub    {stack.hub.url}{HUB_PATH}   (what it received: GET {stack.hub.url}/_received; "
          f"POST {stack.hub.url}/_down makes it answer 503, /_up brings it back)")
    print(f"   sweeper           every 2 s ({SWEEP_SCHEDULE}), first retry {HUB_RETRY_SECONDS} s after a failed delivery")
    print(f"   Bot Connector     {stack.bot.service_url}   (what the user received: GET {stack.bot.connector.url}/_sent)")
    demo = DEMO_DIR.relative_to(PROJECT)
    print(f"   in {demo}/ (removed on exit): jwt (a Bot Framework JWT for the next hour), service_url (the serviceUrl of "
          f"Teams activities), hub_secret (HANDOFF_HUB_SECRET, for signing hub calls), hub_url and connector_url (the "
          f"stand-ins); the README shows the curl commands.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:  # Ctrl+C, or SIGTERM / SIGHUP (raised here as SystemExit)
        print("\ndemo: stopping everything it started…", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The whole handoff on one machine.")
    parser.add_argument("--serve", action="store_true", help="start everything and keep it running for curl, without the walkthrough")
    parser.add_argument("--port", type=int, default=None, help=f"the app's port (default: {DEFAULT_SERVE_PORT} with --serve, a free port otherwise)")
    parser.add_argument("--no-color", action="store_true")
    args = parser.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        parser.error(f"--port must be from 1 to 65535 (got {args.port})")
    # Stop everything on SIGTERM (kill <PID>) and SIGHUP (terminal closed) too, not only on Ctrl+C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    style = Style(sys.stdout.isatty() and not args.no_color and "NO_COLOR" not in os.environ)
    port = args.port or (DEFAULT_SERVE_PORT if args.serve else free_port())
    with tempfile.TemporaryFile() as log:
        print(style.dim("starting Azurite, the function app (two instances), the hub and the Bot Framework stand-ins…"), flush=True)
        stack = Stack(app_port=port, log=log)
        try:
            try:
                stack.start()
            except StartError as exc:
                print(style.bad(f"demo: could not start: {exc}"), file=sys.stderr)
                log.seek(0)
                output = log.read().decode(errors="replace")[-3000:]
                if output.strip():
                    print(style.dim(f"the app's output:\n{output}"), file=sys.stderr)
                return 2
            assert stack.azurite is not None
            print(style.dim(f"app: {stack.app_url} via {stack.runtime}; Azurite on port {stack.azurite.port}"), flush=True)
            if args.serve:
                serve(stack, style)
                return 0
            return 0 if Walkthrough(stack, style).run() else 1
        finally:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
