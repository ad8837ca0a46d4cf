"""The whole handoff on one machine, over real HTTP, with the real code paths.

Starts Azurite, the function app (`func start` when Core Tools is on the PATH, the local runner
otherwise), a second app instance with a 2-second token lifetime (for the expiry step), and loopback
stand-ins for the engagement hub and the Bot Framework (OpenID/JWKS with a key made for this run, the
token endpoint, the Bot Connector). Then walks through the flow step by step, checking each outcome, and
exits 0 only if every step behaved as the contract says.

    python scripts/demo.py             walk through the flow, then stop everything
    python scripts/demo.py --serve     start everything and keep it running for curl (see README)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import httpx  # noqa: E402

from devtools.botframework import APP_ID, APP_PASSWORD, BotFramework  # noqa: E402
from devtools.loopback import Answer, Azurite, LoopbackServer, Recorded, free_port, wait_for_port  # noqa: E402

FIXTURE_INITIATE = PROJECT / "tests" / "fixtures" / "copilot-studio-handoff-initiate.activityset.json"
FIXTURE_ACTION = PROJECT / "requests" / "action.json"
USER_OBJECT_ID = "57162b23-ae6f-4e95-9774-27f7cb019864"  # the Teams user of the invoke fixture
HUB_PATH = "/hooks/handoff"
DEMO_DIR = PROJECT / ".demo"


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
    """Everything the demo runs, started in order and stopped in reverse."""

    def __init__(self, *, app_port: int, log: Any) -> None:
        self.hub_secret = secrets.token_hex(16)
        self.azurite = Azurite().start()
        self.hub = LoopbackServer("hub")
        self.hub.route(HUB_PATH, lambda request: Answer(202, {"accepted": True}))
        self.hub.route("/_received", lambda request: Answer(200, [r.json() for r in self.hub.requests_to(HUB_PATH, "POST")]))
        self.bot = BotFramework()
        self.bot.connector.route("/_sent", lambda request: Answer(200, self.bot.sent_activities()))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log = log
        self.app_url = self._start_app(app_port, ttl=900)
        self.short_lived_app_url = self._start_app(free_port(), ttl=2)

    def settings(self, ttl: int) -> dict[str, str]:
        """Every setting of the contract, explicitly: a developer's local.settings.json must not change the demo."""
        return {
            "HANDOFF_STORAGE_CONNECTION": self.azurite.connection_string,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "HANDOFF_TABLES_ENDPOINT": "",
            "HANDOFF_TABLE_PREFIX": "demo",
            "MicrosoftAppId": APP_ID,
            "MicrosoftAppPassword": APP_PASSWORD,
            "MicrosoftAppTenantId": "",
            "MicrosoftAppType": "MultiTenant",
            "HANDOFF_BOT_ID": APP_ID,
            "HANDOFF_TOKEN_TTL_SECONDS": str(ttl),
            "HANDOFF_HUB_URL": self.hub.url + HUB_PATH,
            "HANDOFF_HUB_SECRET": self.hub_secret,
            "BOT_OPENID_METADATA_URL": self.bot.metadata_url,
            "BOT_TOKEN_URL": self.bot.token_url,
            "HANDOFF_ALLOWED_SERVICE_URL_HOSTS": "127.0.0.1",
            "HANDOFF_AUTH_DISABLED": "false",
            "HANDOFF_MAX_BODY_BYTES": "4194304",
        }

    def _start_app(self, port: int, *, ttl: int) -> str:
        if shutil.which("func"):
            command = ["func", "start", "--port", str(port)]
        else:
            command = [sys.executable, str(PROJECT / "scripts" / "local_runner.py"), "--port", str(port)]
        process = subprocess.Popen(
            command, cwd=PROJECT, env={**os.environ, **self.settings(ttl)}, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        wait_for_port(port, timeout=60)
        return f"http://127.0.0.1:{port}"

    @property
    def runtime(self) -> str:
        return "func start (Azure Functions Core Tools)" if shutil.which("func") else "scripts/local_runner.py"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.bot.stop()
        self.hub.stop()
        self.azurite.stop()


class Walkthrough:
    def __init__(self, stack: Stack, style: Style) -> None:
        self.stack = stack
        self.style = style
        self.http = httpx.Client(timeout=20, trust_env=False)
        self.results: list[tuple[str, bool]] = []
        self.initiated: dict[str, Any] = {}

    def step(self, title: str, run: Callable[[], list[str]]) -> None:
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

    def show(self, label: str, value: object) -> None:
        print(f"   {label:<15} {value}")

    def post(self, url: str, body: bytes, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        response = self.http.post(url, content=body, headers={"Content-Type": "application/json", **kwargs.pop("headers", {})}, **kwargs)
        print(f"   ← {response.status_code} {response.reason_phrase}, {len(response.content)} bytes, in {(time.perf_counter() - started) * 1000:.0f} ms")
        return response

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
        timestamp = request.header("X-Handoff-Timestamp") or ""
        expected = "sha256=" + hmac.new(self.stack.hub_secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
        verified = hmac.compare_digest(expected, request.header("X-Handoff-Signature") or "")
        self.show("request", f"POST {HUB_PATH}  Idempotency-Key: {request.header('Idempotency-Key')}  X-Handoff-Timestamp: {timestamp}")
        self.show("signature", f"{request.header('X-Handoff-Signature')[:23]}…  " + (self.style.ok("verifies with HANDOFF_HUB_SECRET") if verified else self.style.bad("DOES NOT VERIFY")))
        self.show("event", f"{event['type']} · conversation {event['conversation']['id']} · user {event['conversation'].get('user', {}).get('name')}")
        context = event["context"]
        self.show("context", ", ".join(f"{k}={v!r}" for k, v in context.items() if k in ("va_BotName", "va_LastTopic", "va_LastPhrase", "va_AgentMessage")))
        self.show("transcript", f"{len(event['transcript']['activities'])} activities, as the bot sent them")
        problems = []
        if not verified:
            problems.append("the signature does not verify")
        if request.header("Idempotency-Key") != self.initiated.get("handoffId"):
            problems.append("Idempotency-Key is not the handoff id")
        return problems

    def storage(self) -> list[str]:
        from azure.data.tables import TableServiceClient

        service = TableServiceClient.from_connection_string(self.stack.azurite.connection_string)
        handoff_id = self.initiated["handoffId"]
        rows = list(service.get_table_client("demohandoffs").query_entities("PartitionKey eq @pk", parameters={"pk": handoff_id}))
        print(self.style.dim(f"   table demohandoffs, partition {handoff_id}:"))
        for row in sorted(rows, key=lambda r: r["RowKey"] != "handoff"):
            if row["RowKey"] == "handoff":
                fields = {k: row[k] for k in ("conversationId", "expiresAt", "hubStatus", "boundUserId", "transcriptBytes") if k in row}
                self.show(row["RowKey"], ", ".join(f"{k}={v}" for k, v in fields.items()))
            else:
                size = sum(len(v) for k, v in row.items() if k.startswith("p"))
                self.show(row["RowKey"], f"{size} bytes, zlib-compressed")
        print(self.style.dim("   table demotokens:"))
        tokens = list(service.get_table_client("demotokens").list_entities())
        token = self.initiated["continuationToken"]
        for row in tokens:
            self.show("tokens", f"PartitionKey={row['PartitionKey'][:16]}… (SHA-256 of the token), handoffId={row['handoffId']}")
        problems = []
        if not any(row["RowKey"] == "handoff" for row in rows):
            problems.append("no handoff record")
        if any(token in repr(dict(row)) for row in tokens + rows):
            problems.append("the plaintext token is stored")
        if hashlib.sha256(token.encode()).hexdigest() not in {row["PartitionKey"] for row in tokens}:
            problems.append("the token's hash is not the key of its row")
        return problems

    def redeem(self, token: str, *, expect_continued: bool, app_url: str | None = None) -> list[str]:
        activity = json.loads(FIXTURE_ACTION.read_text())
        activity["value"]["continuation"] = token
        activity["serviceUrl"] = self.stack.bot.service_url
        jwt = self.stack.bot.jwt()
        url = f"{app_url or self.stack.app_url}/api/handoff/action"
        before = len(self.stack.bot.sent_activities())
        print(f"   → POST {url}  (invoke handoff/action, Authorization: Bearer <JWT signed with this run's OpenID key>)")
        response = self.post(url, json.dumps(activity).encode(), headers={"Authorization": f"Bearer {jwt}"})
        sent = self.stack.bot.sent_activities()[before:]
        print("   the user received in Teams:")
        for message in sent:
            if message["type"] == "typing":
                print(self.style.dim("     … (typing)"))
            else:
                for index, line in enumerate(message["text"].splitlines()):
                    print(f"     {'💬' if index == 0 else '  '} {line}")
        problems = []
        if response.status_code != 200 or response.content:
            problems.append(f"expected 200 with an empty body, got {response.status_code} {response.text[:200]}")
        kinds = [m["type"] for m in sent]
        if expect_continued and kinds != ["message", "typing", "message"]:
            problems.append(f"expected the continuation (message, typing, message), the user got {kinds}")
        if not expect_continued and (kinds != ["message"] or "start a new conversation" not in sent[0]["text"]):
            problems.append("expected one message telling the user to start a new conversation")
        return problems

    def expired(self) -> list[str]:
        event = json.loads(FIXTURE_INITIATE.read_text())
        event["activities"][0]["id"] += "-expiry-demo"
        print(f"   → POST {self.stack.short_lived_app_url}/api/handoff/initiate  (a second app instance on the same storage, HANDOFF_TOKEN_TTL_SECONDS=2)")
        response = self.post(f"{self.stack.short_lived_app_url}/api/handoff/initiate", json.dumps(event).encode())
        if response.status_code != 201:
            return [f"expected 201, got {response.status_code}"]
        print(self.style.dim("   waiting 3 s for the link to expire…"))
        time.sleep(3)
        return self.redeem(response.json()["continuationToken"], expect_continued=False)

    def run(self) -> bool:
        self.step("Step 1 · Copilot Studio hands off: POST /api/handoff/initiate", self.initiate)
        if not self.initiated:
            return False
        self.step("Step 2 · What the engagement hub received", self.hub_received)
        self.step("Step 3 · What Table Storage holds", self.storage)
        token = self.initiated["continuationToken"]
        self.step("Step 4 · The user opens the link in Teams: POST /api/handoff/action", lambda: self.redeem(token, expect_continued=True))
        self.step("Step 5 · The same link, opened again", lambda: self.redeem(token, expect_continued=False))
        self.step("Step 6 · An expired link", self.expired)
        passed = sum(ok for _, ok in self.results)
        line = f"\ndemo: {passed} of {len(self.results)} steps behaved as expected"
        print(self.style.ok(line) if passed == len(self.results) else self.style.bad(line))
        return passed == len(self.results)


def serve(stack: Stack, style: Style) -> None:
    DEMO_DIR.mkdir(exist_ok=True)
    (DEMO_DIR / "jwt").write_text(stack.bot.jwt(lifetime=3600))
    (DEMO_DIR / "service_url").write_text(stack.bot.service_url)
    print(style.head("\nEverything is running; Ctrl+C stops it."))
    print(f"   app (Functions)   {stack.app_url}   via {stack.runtime}")
    print(f"   Table Storage     {stack.azurite.connection_string}")
    print(f"   engagement hub    {stack.hub.url}{HUB_PATH}   (what it received: GET {stack.hub.url}/_received)")
    print(f"   Bot Connector     {stack.bot.service_url}   (what the user received: GET {stack.bot.connector.url}/_sent)")
    print(f"   a Bot Framework JWT for the next hour is in {DEMO_DIR.relative_to(PROJECT)}/jwt; the README shows the curl commands.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The whole handoff on one machine.")
    parser.add_argument("--serve", action="store_true", help="start everything and keep it running for curl, without the walkthrough")
    parser.add_argument("--port", type=int, default=None, help="the app's port (default: 7071 with --serve, a free port otherwise)")
    parser.add_argument("--no-color", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop everything on SIGTERM too, not only Ctrl+C
    style = Style(sys.stdout.isatty() and not args.no_color and "NO_COLOR" not in os.environ)
    port = args.port or (7071 if args.serve else free_port())
    with tempfile.TemporaryFile() as log:
        print(style.dim("starting Azurite, the function app (two instances), the hub and the Bot Framework stand-ins…"))
        try:
            stack = Stack(app_port=port, log=log)
        except Exception as exc:  # noqa: BLE001
            log.seek(0)
            print(style.bad(f"could not start: {exc}\n{log.read().decode(errors='replace')[-3000:]}"), file=sys.stderr)
            return 2
        try:
            print(style.dim(f"app: {stack.app_url} via {stack.runtime}; Azurite on port {stack.azurite.port}"))
            if args.serve:
                serve(stack, style)
                return 0
            return 0 if Walkthrough(stack, style).run() else 1
        finally:
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
