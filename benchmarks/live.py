"""End-to-end figures, in process, against Azurite and loopback servers: each path against its raw floor.

A floor is the path's storage requests and POSTs (DESIGN "Storage budgets") made with raw clients on the same
Azurite and the same loopback servers, with rows and bodies of the same sizes (copied from ours), and nothing
else: no parsing, no JWT, no signature check, no model. Ours and the floor run interleaved, so that the drift
of a shared machine and of Azurite's growing tables falls on both alike.

| path | ours | floor |
|---|---|---|
| redemption | `handoff_action.main`, `handoff/action` invoke | 2 point reads (record, token row); 1 batch (record merge If-Match, claim row, `handoff.connected` event row); 1 link row insert; 4 connector POSTs; the hub POST; 1 record merge If-Match |
| user message to the hub | `handoff_action.main`, `message` | 2 point reads (link, record); 1 batch (record merge If-Match, event row, Teams message id row); the hub POST; 1 record merge If-Match |
| hub message to the user | `handoff_hub.main`, signed `message` | 1 point read (record); 1 batch (record merge If-Match, idempotency row); 1 connector POST; 1 idempotency row update |
| initiate | `handoff_initiate.main` | 1 batch in the due index (expiry, retention, delivery safety net); 1 batch (record, compressed blob rows, token row, event row); the hub POST; 1 record merge If-Match |
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import secrets
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import Row, app_settings, interleave, latency_rows, ms, run_for
from devtools.botframework import CONNECTOR_PATH, BotFramework
from devtools.loopback import Answer, Azurite, LoopbackServer
from devtools.payloads import transcript_activities

PROJECT = Path(__file__).resolve().parent.parent
FIXTURE = PROJECT / "tests" / "fixtures" / "copilot-studio-handoff-initiate.activityset.json"
INVOKE = PROJECT / "tests" / "fixtures" / "teams-handoff-action.invoke.json"
HUB_PATH = "/hook"
USER_TEXT = "My order 4711 arrived damaged: the box was crushed and two of the mugs are broken. Can I get a replacement?"
AGENT_TEXT = "I'm sorry to hear that. I've opened a replacement order for the two mugs; you'll get a confirmation email shortly."


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Environment:
    """Azurite, the loopback Bot Framework and hub, the app's settings, and raw clients for the floors."""

    def __init__(self) -> None:
        self.azurite = Azurite().start()
        self.bot = BotFramework()
        self.hub = LoopbackServer("hub")
        self.hub.route(HUB_PATH, lambda r: Answer(202, {"accepted": True}))
        self.prefix = f"b{uuid.uuid4().hex[:10]}"
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.hub_key = base64.b64decode(self.secret[len("whsec_") :])
        os.environ.update(
            {
                "HANDOFF_STORAGE_CONNECTION": self.azurite.connection_string,
                "HANDOFF_TABLE_PREFIX": self.prefix,
                **app_settings(self.bot, hub_url=self.hub.url + HUB_PATH, hub_secret=self.secret),
            }
        )
        import httpx
        from azure.data.tables import TableServiceClient

        from shared import services

        services.reset()
        self.raw_tables = TableServiceClient.from_connection_string(self.azurite.connection_string)
        self.raw_http = httpx.Client(trust_env=False)
        self.jwt = self.bot.jwt(lifetime=7200)
        self.invoke_template = json.loads(INVOKE.read_text())
        self.invoke_template["serviceUrl"] = self.bot.service_url

    # ---- requests as the Functions host builds them

    def request(self, body: bytes, route: str, headers: dict[str, str] | None = None, route_params: dict[str, str] | None = None):
        import azure.functions as func

        return func.HttpRequest(
            method="POST", url=f"http://localhost/api/{route}", headers={"Content-Type": "application/json", **(headers or {})},
            params={}, route_params=route_params or {}, body=body,
        )

    def action(self, activity: dict[str, Any]):
        import handoff_action

        return handoff_action.main(self.request(json.dumps(activity).encode(), "handoff/action", {"Authorization": f"Bearer {self.jwt}"}))

    def hub_call(self, handoff_id: str, event: dict[str, Any]):
        import handoff_hub

        body = json.dumps({"handoffId": handoff_id, **event}).encode()
        webhook_id = f"msg_{uuid.uuid4().hex}"
        headers = {"webhook-id": webhook_id, **self.signature(webhook_id, body)}
        return handoff_hub.main(self.request(body, f"handoffs/{handoff_id}/events", headers, {"handoffId": handoff_id}))

    def signature(self, webhook_id: str, body: bytes) -> dict[str, str]:
        """Standard Webhooks headers, as the hub's library (or the floor) makes them."""
        stamp = str(int(time.time()))
        digest = hmac.new(self.hub_key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        return {"webhook-timestamp": stamp, "webhook-signature": "v1," + base64.b64encode(digest).decode()}

    def invoke(self, token: str, conversation_id: str) -> dict[str, Any]:
        activity = json.loads(json.dumps(self.invoke_template))
        activity["value"] = {"continuation": token}
        activity["conversation"]["id"] = conversation_id
        return activity

    def message(self, conversation_id: str, text: str = USER_TEXT) -> dict[str, Any]:
        """A user's message in their 1:1 chat with the bot, as Teams sends it."""
        activity = json.loads(json.dumps(self.invoke_template))
        for name in ("name", "value", "replyToId", "localTimestamp", "rawTimestamp", "rawLocalTimestamp"):
            activity.pop(name, None)
        activity.update(type="message", id=f"1:{uuid.uuid4().hex}", text=text, textFormat="plain", timestamp=now_iso())
        activity["conversation"]["id"] = conversation_id
        return activity

    # ---- raw access for the floors

    def table(self, name: str):
        """One of the app's tables, with a raw client (to copy its rows into a floor's table)."""
        return self.raw_tables.get_table_client(self.prefix + name)

    def floor_table(self, name: str):
        return self.raw_tables.create_table_if_not_exists(f"{self.prefix}floor{name}")

    def post_hub(self, webhook_id: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "webhook-id": webhook_id, **self.signature(webhook_id, body)}
        self.raw_http.post(self.hub.url + HUB_PATH, content=body, headers=headers).raise_for_status()

    def post_connector(self, conversation_id: str, body: bytes) -> None:
        from urllib.parse import quote

        url = f"{self.bot.service_url}v3/conversations/{quote(conversation_id, safe='')}/activities"
        headers = {"Content-Type": "application/json", "Authorization": "Bearer floor-access-token"}
        self.raw_http.post(url, content=body, headers=headers).raise_for_status()

    def clear(self) -> None:
        self.bot.connector.clear()
        self.hub.clear()

    def stop(self) -> None:
        self.raw_http.close()
        self.bot.stop()
        self.hub.stop()
        self.azurite.stop()


def _entity(row: Any, **changes: Any) -> dict[str, Any]:
    """A row read with a raw client as a plain dict to write elsewhere (same properties, same sizes)."""
    return {**dict(row), **changes}


# ------------------------------------------------------------------------------------------------
# Setup (not measured): handoffs written through the app's own store, and connected through the real redemption


def mint_handoffs(count: int, *, threads: int = 8) -> list[str]:
    """Recorded handoffs (handoff.requested delivered) with one continuation token each; the tokens."""
    from shared import services
    from shared.activities import parse_handoff_initiate
    from shared.handoffs import Handoff, Reminder, StoredEvent, handoff_id_for
    from shared.settings import current_settings
    from shared.tokens import mint, row_key
    from shared.vocabulary import Delivery, EventType

    store = services.handoff_store(current_settings())
    context = parse_handoff_initiate(FIXTURE.read_bytes()).context
    reminder = Reminder(bot_name=context.bot_name, last_topic=context.last_topic, last_phrase=context.last_phrase,
                        agent_message=context.agent_message, language=context.language)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    minted: list[str] = []
    lock = threading.Lock()

    def work(indices: range) -> None:
        for index in indices:
            handoff_id = handoff_id_for(f"bench-{uuid.uuid4().hex}", str(index))
            token = mint(handoff_id)
            handoff = Handoff(handoff_id=handoff_id, conversation_id=f"bench-{index}", activity_id=str(index), created_at=now,
                              expires_at=now + timedelta(hours=2), reminder=reminder, requested_delivery=Delivery.DELIVERED,
                              last_activity_at=now, next_seq=2, settled_seq=1)
            first = StoredEvent(handoff_id=handoff_id, seq=1, type=EventType.REQUESTED, occurred_at=now)
            assert store.create(handoff, {}, token_key=row_key(token), first_event=first) is not None
            with lock:
                minted.append(token)

    per = -(-count // threads)
    workers = [threading.Thread(target=work, args=(range(i * per, min(count, (i + 1) * per)),)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return minted


@dataclass(frozen=True)
class Chat:
    """A handoff connected to a Teams 1:1 chat of its own."""

    handoff_id: str
    conversation_id: str


def connect(env: Environment, count: int) -> list[Chat]:
    chats = []
    for token in mint_handoffs(count):
        conversation_id = f"a:bench-{uuid.uuid4().hex}"
        response = env.action(env.invoke(token, conversation_id))
        assert response.status_code == 200, response.get_body()
        chats.append(Chat(token[:32], conversation_id))
    env.clear()
    return chats


# ------------------------------------------------------------------------------------------------
# Redemption


class OurRedemption:
    def __init__(self, env: Environment, tokens: list[str]) -> None:
        self.env, self.tokens = env, tokens
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            token = self.tokens.pop()
        response = self.env.action(self.env.invoke(token, f"a:bench-{uuid.uuid4().hex}"))
        assert response.status_code == 200, response.get_body()


class RawRedemption:
    """2 point reads, the claim batch, the link insert, the same 4 connector POSTs and hub POST, the final merge."""

    def __init__(self, env: Environment, count: int, sample_token: str, activities: list[bytes], hub_body: bytes) -> None:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        from shared.tokens import row_key

        self.env = env
        self.table, self.links = env.floor_table("redeem"), env.floor_table("links")
        self.match, self.mode = MatchConditions.IfNotModified, UpdateMode.MERGE
        record = env.table("handoffs").get_entity(sample_token[:32], "handoff")  # an unredeemed record of ours
        self.keys = [uuid.uuid4().hex for _ in range(count)]
        self.token_row = row_key(sample_token)
        for key in self.keys:
            self.table.submit_transaction([
                ("create", _entity(record, PartitionKey=key)),
                ("create", {"PartitionKey": key, "RowKey": self.token_row}),
            ])
        self.activities, self.hub_body = activities, hub_body
        invoke = env.invoke("x", "c")
        self.teams = json.dumps({"service_url": invoke["serviceUrl"], "conversation_id": "a:bench-" + "0" * 32, "channel_id": "msteams",
                                 "bot": invoke["recipient"], "user": invoke["from"], "tenant_id": invoke["conversation"]["tenantId"], "locale": "en-US"})
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            key = self.keys.pop()
        conversation_id = f"a:bench-{uuid.uuid4().hex}"
        record = self.table.get_entity(key, "handoff")
        self.table.get_entity(key, self.token_row, select=["PartitionKey"])
        now, seq = now_iso(), record["nextSeq"]
        claim = {"claimId": secrets.token_hex(16), "claimedAt": now}
        result = self.table.submit_transaction([
            ("update", {"PartitionKey": key, "RowKey": "handoff", **claim, "teams": self.teams, "nextSeq": seq + 1, "lastActivityAt": now,
                        "senderId": secrets.token_hex(8), "senderUntil": now},
             {"mode": self.mode, "etag": record.metadata["etag"], "match_condition": self.match}),
            ("create", {"PartitionKey": key, "RowKey": "claim", **claim}),
            ("create", {"PartitionKey": key, "RowKey": f"event.{seq:010d}", "type": "handoff.connected", "occurredAt": now,
                        "payload": self.teams, "failed": False}),
        ])
        self.links.create_entity({"PartitionKey": hashlib.sha256(conversation_id.encode()).hexdigest(), "RowKey": "link", "handoffId": key},
                                 response_preference="return-no-content")
        for body in self.activities:
            self.env.post_connector(conversation_id, body)
        self.env.post_hub(f"{key}:{seq}", self.hub_body)
        self.table.update_entity({"PartitionKey": key, "RowKey": "handoff", "connected": True, "settledSeq": seq, "senderId": "", "senderUntil": ""},
                                 mode=self.mode, etag=result[0]["etag"], match_condition=self.match)


def bench_redeem(rows: list[Row], env: Environment, rounds: int = 200) -> None:
    tokens = mint_handoffs(rounds + 12)
    ours = OurRedemption(env, tokens)
    env.clear()
    ours()  # one of ours first, to copy what it sent
    activities = [r.body for r in env.bot.connector.requests_to(CONNECTOR_PATH, "POST")]
    hub_bodies = [r.body for r in env.hub.requests_to(HUB_PATH, "POST")]
    assert len(activities) == 4 and len(hub_bodies) == 1, (len(activities), len(hub_bodies))
    floor = RawRedemption(env, rounds + 12, tokens[0], activities, hub_bodies[0])
    for _ in range(10):  # warm both: keys, bot token, connection pools
        ours()
        floor()
    env.clear()
    a, b = interleave(ours, floor, rounds)
    sent, posted = len(env.bot.connector.requests_to(CONNECTOR_PATH, "POST")), len(env.hub.requests_to(HUB_PATH, "POST"))
    assert (sent, posted) == (rounds * 8, rounds * 2), f"expected {rounds * 8} connector and {rounds * 2} hub POSTs, saw {sent}, {posted}"
    env.clear()
    rows += latency_rows("redemption (handoff_action, invoke) vs its raw floor", a, b, limit=1.2)


# ------------------------------------------------------------------------------------------------
# A user's message relayed to the hub


class OurRelay:
    def __init__(self, env: Environment, chats: list[Chat]) -> None:
        self.env, self.chats = env, chats
        self.turn = itertools.count()

    def __call__(self, slot: int | None = None) -> None:
        chat = self.chats[next(self.turn) % len(self.chats) if slot is None else slot]
        response = self.env.action(self.env.message(chat.conversation_id))
        assert response.status_code == 200, response.get_body()


class RawRelay:
    """2 point reads (link, record), the batch (record merge, event row, Teams message id row), the hub POST, the final merge."""

    def __init__(self, env: Environment, chats: list[Chat], hub_body: bytes) -> None:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        from shared.links import link_key

        self.env = env
        self.table, self.links = env.floor_table("relay"), env.floor_table("relaylinks")
        self.match, self.mode = MatchConditions.IfNotModified, UpdateMode.MERGE
        self.hub_body = hub_body
        self.payload = json.dumps({k: v for k, v in json.loads(hub_body).items() if k not in ("type", "handoffId", "seq", "occurredAt")},
                                  ensure_ascii=False, separators=(",", ":"))
        self.chats: list[Chat] = []
        for chat in chats:  # a copy of each of our connected handoffs and its link, under new keys
            key, conversation_id = uuid.uuid4().hex, f"a:floor-{uuid.uuid4().hex}"
            self.table.create_entity(_entity(env.table("handoffs").get_entity(chat.handoff_id, "handoff"), PartitionKey=key))
            link = env.table("links").get_entity(link_key(chat.conversation_id), "link")
            self.links.create_entity(_entity(link, PartitionKey=hashlib.sha256(conversation_id.encode()).hexdigest(), handoffId=key))
            self.chats.append(Chat(key, conversation_id))
        self.turn = itertools.count()

    def __call__(self, slot: int | None = None) -> None:
        chat = self.chats[next(self.turn) % len(self.chats) if slot is None else slot]
        message_id = f"1:{uuid.uuid4().hex}"
        link = self.links.get_entity(hashlib.sha256(chat.conversation_id.encode()).hexdigest(), "link")
        key = link["handoffId"]
        record = self.table.get_entity(key, "handoff")
        now, seq = now_iso(), record["nextSeq"]
        result = self.table.submit_transaction([
            ("update", {"PartitionKey": key, "RowKey": "handoff", "nextSeq": seq + 1, "lastActivityAt": now, "senderId": secrets.token_hex(8), "senderUntil": now},
             {"mode": self.mode, "etag": record.metadata["etag"], "match_condition": self.match}),
            ("create", {"PartitionKey": key, "RowKey": f"event.{seq:010d}", "type": "handoff.message", "occurredAt": now, "payload": self.payload, "failed": False}),
            ("create", {"PartitionKey": key, "RowKey": "teams." + hashlib.sha256(message_id.encode()).hexdigest(), "seq": seq}),
        ])
        self.env.post_hub(f"{key}:{seq}", self.hub_body)
        self.table.update_entity({"PartitionKey": key, "RowKey": "handoff", "settledSeq": seq, "senderId": "", "senderUntil": ""},
                                 mode=self.mode, etag=result[0]["etag"], match_condition=self.match)


def relay_pair(env: Environment, chats: int) -> tuple[OurRelay, RawRelay]:
    ours = OurRelay(env, connect(env, chats))
    ours()  # one of ours first, to copy the event it posted
    hub_body = env.hub.requests_to(HUB_PATH, "POST")[-1].body
    assert json.loads(hub_body)["type"] == "handoff.message"
    return ours, RawRelay(env, ours.chats, hub_body)


def bench_relay(rows: list[Row], env: Environment, rounds: int = 300) -> None:
    ours, floor = relay_pair(env, 8)
    for _ in range(10):
        ours()
        floor()
    env.clear()
    a, b = interleave(ours, floor, rounds)
    posted = len(env.hub.requests_to(HUB_PATH, "POST"))
    assert posted == rounds * 2, f"expected {rounds * 2} hub POSTs, saw {posted}"
    env.clear()
    rows += latency_rows("user message relayed to the hub (handoff_action, message) vs its raw floor", a, b, limit=1.25)


# ------------------------------------------------------------------------------------------------
# A hub message passed to the user


class OurHubMessage:
    def __init__(self, env: Environment, chats: list[Chat]) -> None:
        self.env, self.chats = env, chats
        self.turn = itertools.count()

    def __call__(self) -> None:
        chat = self.chats[next(self.turn) % len(self.chats)]
        response = self.env.hub_call(chat.handoff_id, {"type": "message", "text": AGENT_TEXT, "agent": {"name": "Dana"}})
        assert response.status_code == 200, response.get_body()


class RawHubMessage:
    """1 point read (record), the batch (record merge, idempotency row), the connector POST, the idempotency row update."""

    def __init__(self, env: Environment, chats: list[Chat], activity: bytes, answer: bytes) -> None:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        self.env = env
        self.table = env.floor_table("hubcalls")
        self.match, self.mode = MatchConditions.IfNotModified, UpdateMode.MERGE
        self.activity, self.answer = activity, answer.decode()
        self.chats = []
        for chat in chats:
            key = uuid.uuid4().hex
            self.table.create_entity(_entity(env.table("handoffs").get_entity(chat.handoff_id, "handoff"), PartitionKey=key))
            self.chats.append(Chat(key, chat.conversation_id))
        self.turn = itertools.count()

    def __call__(self) -> None:
        chat = self.chats[next(self.turn) % len(self.chats)]
        key, key_row = chat.handoff_id, "key." + hashlib.sha256(uuid.uuid4().hex.encode()).hexdigest()
        body_sha = hashlib.sha256(self.activity).hexdigest()
        record = self.table.get_entity(key, "handoff")
        now = now_iso()
        self.table.submit_transaction([
            ("update", {"PartitionKey": key, "RowKey": "handoff", "lastActivityAt": now},
             {"mode": self.mode, "etag": record.metadata["etag"], "match_condition": self.match}),
            ("create", {"PartitionKey": key, "RowKey": key_row, "bodySha256": body_sha, "done": False, "lockedUntil": now}),
        ])
        self.env.post_connector(chat.conversation_id, self.activity)
        self.table.update_entity({"PartitionKey": key, "RowKey": key_row, "done": True, "status": 200, "answer": self.answer, "lockedUntil": ""},
                                 mode=self.mode)


def bench_hub_message(rows: list[Row], env: Environment, rounds: int = 300) -> None:
    chats = connect(env, 8)
    ours = OurHubMessage(env, chats)
    ours()  # one of ours first, to copy what it sent
    sent = env.bot.connector.requests_to(CONNECTOR_PATH, "POST")
    assert len(sent) == 1, len(sent)
    answer = json.dumps({"handoffId": chats[0].handoff_id, "state": "requested", "connected": True, "delivered": True,
                         "activityIds": ["activity-00000000"]}).encode()
    floor = RawHubMessage(env, chats, sent[0].body, answer)
    for _ in range(10):
        ours()
        floor()
    env.clear()
    a, b = interleave(ours, floor, rounds)
    delivered = len(env.bot.connector.requests_to(CONNECTOR_PATH, "POST"))
    assert delivered == rounds * 2, f"expected {rounds * 2} connector POSTs, saw {delivered}"
    env.clear()
    rows += latency_rows("hub message passed to the user (handoff_hub, signed message) vs its raw floor", a, b, limit=1.25)


# ------------------------------------------------------------------------------------------------
# Initiate


def handoff_body(count: int, *, activity_id: str | None = None) -> bytes:
    document = json.loads(FIXTURE.read_text())
    event = document["activities"][0]
    event["attachments"][0]["content"] = {"activities": transcript_activities(count, seed=count)}
    if activity_id:
        event["id"] = activity_id
    return json.dumps(document).encode()


class RawInitiate:
    """The due-index batch, the record batch (record, blob rows pre-packed, token row, event row), the hub POST of
    the same body, the final merge."""

    def __init__(self, env: Environment, record: Any, body: bytes, hub_body: bytes) -> None:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        from shared.activities import parse_handoff_initiate
        from shared.handoffs import _pack

        self.env = env
        self.table, self.due = env.floor_table("initiate"), env.floor_table("due")
        parsed = parse_handoff_initiate(body)
        blobs = {"document": json.dumps(parsed.context_values).encode() * 2, "transcript": parsed.transcript.json_bytes}
        self.packed = [_pack("p", name, data) for name, data in blobs.items()]
        self.record = {k: v for k, v in _entity(record).items() if not k.startswith(("document", "transcript"))}
        self.hub_body = hub_body
        self.match, self.mode = MatchConditions.IfNotModified, UpdateMode.MERGE

    def __call__(self) -> None:
        key = uuid.uuid4().hex
        self.due.submit_transaction([
            ("upsert", {"PartitionKey": "due", "RowKey": f"20991231T000000Z|expire|{key}", "handoffId": key, "kind": "expire"}),
            ("upsert", {"PartitionKey": "due", "RowKey": f"20991231T000000Z|purge|{key}", "handoffId": key, "kind": "purge"}),
            ("upsert", {"PartitionKey": "due", "RowKey": f"20991231T000000Z|deliver|{key}", "handoffId": key, "kind": "deliver"}),
        ])
        record: dict[str, Any] = {**self.record, "PartitionKey": key}
        operations: list[tuple[Any, ...]] = [("create", record)]
        for rows, meta in self.packed:
            record.update(meta)
            operations.extend(("create", {**row, "PartitionKey": key}) for row in rows)
        operations.append(("create", {"PartitionKey": key, "RowKey": "token." + hashlib.sha256(key.encode()).hexdigest()}))
        operations.append(("create", {"PartitionKey": key, "RowKey": "event.0000000001", "type": "handoff.requested", "occurredAt": now_iso(),
                                      "payload": "{}", "failed": False}))
        result = self.table.submit_transaction(operations)
        self.env.post_hub(key, self.hub_body)
        self.table.update_entity({"PartitionKey": key, "RowKey": "handoff", "settledSeq": 1, "requestedDelivery": "delivered", "senderId": "", "senderUntil": ""},
                                 mode=self.mode, etag=result[0]["etag"], match_condition=self.match)


def bench_initiate(rows: list[Row], env: Environment) -> None:
    import handoff_initiate

    for count, rounds in ((2, 200), (300, 80)):
        placeholder = "ACTIVITY-ID-PLACEHOLDER-0000000000000000"
        template = handoff_body(count, activity_id=placeholder)

        def ours() -> None:
            body = template.replace(placeholder.encode(), uuid.uuid4().hex.encode().ljust(len(placeholder), b"0"))
            response = handoff_initiate.main(env.request(body, "handoff/initiate"))
            assert response.status_code == 201, response.get_body()

        env.clear()
        ours()  # one of ours first, to copy its record and what it posted
        posted = env.hub.requests_to(HUB_PATH, "POST")
        assert len(posted) == 1, len(posted)
        record = env.table("handoffs").get_entity(json.loads(posted[0].body)["handoffId"], "handoff")
        floor = RawInitiate(env, record, template, posted[0].body)
        for _ in range(5):
            ours()
            floor()
        a, b = interleave(ours, floor, rounds)
        env.clear()
        o, f = statistics.median(a), statistics.median(b)
        size = len(template) / 1000
        rows.append(Row(f"handoff_initiate, {count}-activity transcript ({size:.0f} kB) vs its raw floor, p50", ms(o), ms(f), o / f, "<= 1.3x", o / f <= 1.3))


# ------------------------------------------------------------------------------------------------
# Throughput


def bench_throughput(rows: list[Row], env: Environment, seconds: float, threads: int = 8) -> None:
    """`threads` threads, each relaying messages of its own handoff, against as many doing the raw floor."""
    ours, floor = relay_pair(env, threads)
    run_for(ours, threads=threads, seconds=0.5)
    run_for(floor, threads=threads, seconds=0.5)
    env.clear()
    # Alternating 2-second slices (floor, ours, ours, floor, ...) so that drift falls on both alike.
    slices = max(1, round(seconds / 2))
    done: dict[str, int] = {"ours": 0, "floor": 0}
    for index in range(slices):
        pair: list[tuple[Callable[[int], None], str]] = [(floor, "floor"), (ours, "ours")] if index % 2 == 0 else [(ours, "ours"), (floor, "floor")]
        count = 0
        for func, name in pair:
            calls = run_for(func, threads=threads, seconds=seconds / slices)
            done[name] += calls
            count += calls
        posted = len(env.hub.requests_to(HUB_PATH, "POST"))
        assert posted == count, f"expected {count} hub POSTs (one per message), saw {posted}"
        env.clear()
    ratio = done["ours"] / done["floor"]
    rows.append(Row(f"throughput: {threads} threads relaying user messages of distinct handoffs, {seconds:.0f} s each in alternating slices",
                    f"{done['ours'] / seconds:.0f}/s", f"{done['floor'] / seconds:.0f}/s", ratio, ">= 90%", ratio >= 0.9))
