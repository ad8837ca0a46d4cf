"""POST /api/handoff/initiate, in process, against Azurite and a loopback engagement hub."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from shared import services
from shared.schedule import Due
from shared.settings import current_settings
from tests.conftest import HUB_PATH, HUB_SECRET
from tests.helpers import (
    ACTIVITY_SET,
    body_json,
    error_of,
    fixture,
    fixture_bytes,
    handoff_event,
    initiate,
    stored_rows,
    verified_hub_events,
    verify_hub_event,
)
from devtools.loopback import Answer, Azurite, free_port
from devtools.payloads import transcript_activities

FIELDS = {"handoffId", "conversationId", "continuationToken", "deepLink", "expiresAt", "hub", "card"}


def stored_blob(handoff_id: str, name: str) -> bytes | None:
    return services.handoff_store(current_settings()).read_blob(handoff_id, name)


def partition_rows(tables, handoff_id: str) -> list[str]:
    return sorted(row["RowKey"] for row in stored_rows(tables.handoffs) if row["PartitionKey"] == handoff_id)


def due_rows(tables) -> list[Due]:
    return sorted((Due.from_row_key(row["RowKey"]) for row in stored_rows(tables.due)), key=lambda d: (d.at, d.kind.value))


def token_of(deep_link: str) -> str:
    return parse_qs(urlsplit(deep_link).query)["continuation"][0]


class TestCreated:
    def test_new_handoff_is_recorded_delivered_and_linked(self, hub_env) -> None:
        before = datetime.now(timezone.utc)
        response = initiate(fixture_bytes(ACTIVITY_SET))
        assert response.status_code == 201
        assert response.mimetype == "application/json"
        body = body_json(response)
        assert set(body) == FIELDS
        assert body["conversationId"] == "91hcXEd0ZYCBPoRwBDPHZ6-o"
        assert body["hub"] == {"status": "delivered"}

        token = body["continuationToken"]  # <handoffId><43 URL-safe characters of a 256-bit secret>
        assert len(token) == 75 and token.startswith(body["handoffId"])
        assert token[32:].replace("-", "").replace("_", "").isalnum()
        link = urlsplit(body["deepLink"])
        assert f"{link.scheme}://{link.netloc}{link.path}" == "https://teams.microsoft.com/l/chat/0/0"
        query = parse_qs(link.query)
        assert query == {"users": [f"28:{current_settings().bot_id}"], "continuation": [token]}
        assert len(body["deepLink"]) <= 2048

        expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
        assert body["expiresAt"].endswith("Z")
        assert timedelta(seconds=895) <= expires - before <= timedelta(seconds=905)

        card = body["card"]
        assert card["type"] == "AdaptiveCard"
        assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Continue in Teams", "url": body["deepLink"]}]

    def test_record_holds_context_and_transcript_as_received(self, env) -> None:
        event = handoff_event()
        transcript_text = json.dumps(event["attachments"][0]["content"], indent=2)
        event["attachments"][0]["content"] = transcript_text
        event["value"]["OrderNumber"] = "A-1234"
        body = body_json(initiate({"activities": [event]}, params={"userId": "user-1", "tenantId": "tenant-1"}))
        assert body["hub"] == {"status": "skipped"}
        handoff_id = body["handoffId"]
        assert stored_blob(handoff_id, "transcript") == transcript_text.encode()
        document = json.loads(stored_blob(handoff_id, "document"))
        assert document["context"] == event["value"]
        assert document["conversation"]["id"] == "91hcXEd0ZYCBPoRwBDPHZ6-o"
        record = services.handoff_store(current_settings()).find(handoff_id)
        assert (record.user_id, record.tenant_id) == ("user-1", "tenant-1")
        assert (record.reminder.bot_name, record.reminder.last_topic) == ("Test501", "Lesson 1 - A simple topic")

    def test_the_sweeper_finds_its_expiry_and_retention_work(self, env, tables, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_RETENTION_DAYS", "2")
        before = datetime.now(timezone.utc).replace(microsecond=0)
        body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
        expire, purge = due_rows(tables)
        assert (expire.kind.value, expire.handoff_id, expire.at) == ("expire", body["handoffId"], expires)
        assert (purge.kind.value, purge.handoff_id) == ("purge", body["handoffId"])
        assert timedelta(days=2) <= purge.at - before <= timedelta(days=2, seconds=5)

    def test_three_thousand_activity_transcript_round_trip(self, hub_env) -> None:
        activities = transcript_activities(3000)
        event = handoff_event()
        event["attachments"][0]["content"] = json.dumps({"activities": activities})
        assert len(event["attachments"][0]["content"]) > 1_500_000
        response = initiate({"activities": [event]})
        assert response.status_code == 201
        handoff_id = body_json(response)["handoffId"]
        assert stored_blob(handoff_id, "transcript") == event["attachments"][0]["content"].encode()
        [(_, delivered)] = verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)
        assert delivered["transcript"]["activities"] == activities

    def test_content_url_transcript_is_recorded_and_forwarded_as_reference(self, hub_env) -> None:
        event = handoff_event(attachments=[{"name": "Transcript", "contentType": "application/json", "contentUrl": "https://files.example/t.json"}])
        response = initiate(event)
        assert response.status_code == 201
        handoff_id = body_json(response)["handoffId"]
        assert stored_blob(handoff_id, "transcript") is None
        reference = {"contentUrl": "https://files.example/t.json", "contentType": "application/json"}
        assert json.loads(stored_blob(handoff_id, "document"))["transcriptReference"] == reference
        [(_, delivered)] = verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)
        assert delivered["transcript"] == reference


class TestHubWebhook:
    def test_signed_standard_webhooks_event(self, hub_env) -> None:
        body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        [request] = hub_env.requests_to(HUB_PATH)
        assert request.method == "POST" and request.header("Content-Type") == "application/json"
        assert request.header("webhook-id") == body["handoffId"]
        assert abs(int(request.header("webhook-timestamp")) - time.time()) < 30
        event = verify_hub_event(request, HUB_SECRET)  # as a hub verifies it, with the standardwebhooks package
        assert event["type"] == "handoff.requested"
        assert (event["handoffId"], event["seq"]) == (body["handoffId"], 1)
        assert event["deepLink"] == body["deepLink"] and event["expiresAt"] == body["expiresAt"]
        assert event["conversation"]["id"] == "91hcXEd0ZYCBPoRwBDPHZ6-o"
        assert event["conversation"]["user"]["name"] == "C2 User"
        original = fixture(ACTIVITY_SET)["activities"][0]
        assert event["context"] == original["value"]
        assert event["transcript"] == original["attachments"][0]["content"]
        assert event["createdAt"].endswith("Z") and event["occurredAt"].endswith("Z")

    def test_tampered_body_or_another_secret_fails_verification(self, hub_env) -> None:
        initiate(fixture_bytes(ACTIVITY_SET))
        [request] = hub_env.requests_to(HUB_PATH)
        other = "whsec_" + "QW5vdGhlci1zZWNyZXQtb2YtdGhpcnR5LXR3by1ieXRlcyE="
        with pytest.raises(WebhookVerificationError):
            verify_hub_event(request, other)
        request.body = request.body.replace(b"store hours", b"store hourz")
        with pytest.raises(WebhookVerificationError):
            verify_hub_event(request, HUB_SECRET)

    def test_during_a_rotation_both_secrets_verify(self, hub_env, monkeypatch) -> None:
        previous = "whsec_" + "UHJldmlvdXMtc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM="
        monkeypatch.setenv("HANDOFF_HUB_SECRET_PREVIOUS", previous)
        initiate(fixture_bytes(ACTIVITY_SET))
        [request] = hub_env.requests_to(HUB_PATH)
        assert len(request.header("webhook-signature").split(" ")) == 2
        assert verify_hub_event(request, HUB_SECRET) == verify_hub_event(request, previous)

    def test_no_secret_no_signature(self, hub_env, monkeypatch) -> None:
        monkeypatch.delenv("HANDOFF_HUB_SECRET")
        body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        [request] = hub_env.requests_to(HUB_PATH)
        assert request.header("webhook-signature") is None
        assert request.header("webhook-id") == body["handoffId"] and request.header("webhook-timestamp")

    def test_retries_429_honouring_retry_after(self, hub_env) -> None:
        hub_env.script(HUB_PATH, Answer(429, headers={"Retry-After": "1"}), Answer(503))
        body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        assert body["hub"] == {"status": "delivered"}
        attempts = hub_env.requests_to(HUB_PATH)
        assert len(attempts) == 3
        assert {r.header("webhook-id") for r in attempts} == {body["handoffId"]}
        assert int(attempts[2].header("webhook-timestamp")) >= int(attempts[0].header("webhook-timestamp")) + 1
        verify_hub_event(attempts[2], HUB_SECRET)

    def test_pending_waits_for_its_retry_time_then_a_repeat_delivers_exactly_once(self, hub_env, tables, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_HUB_RETRY_SECONDS", "1")
        hub_env.script(HUB_PATH, *[Answer(503)] * 3)
        first = initiate(fixture_bytes(ACTIVITY_SET))
        assert first.status_code == 201 and body_json(first)["hub"] == {"status": "pending"}
        handoff_id = body_json(first)["handoffId"]
        assert len(hub_env.requests_to(HUB_PATH)) == 3
        record = services.handoff_store(current_settings()).find(handoff_id)
        assert (record.settled_seq, record.next_seq, record.retry_delay) == (0, 2, 1)
        # the sweeper finds the retry at the handoff's retry time (and the initiate's safety net, after the lease)
        delivers = [d for d in due_rows(tables) if d.kind.value == "deliver"]
        assert {d.handoff_id for d in delivers} == {handoff_id}
        assert any(abs((d.at - record.retry_at).total_seconds()) < 1 for d in delivers)

        at_once = initiate(fixture_bytes(ACTIVITY_SET))  # the hub is known to be down: no waiting on it
        assert at_once.status_code == 200 and body_json(at_once)["hub"] == {"status": "pending"}
        assert len(hub_env.requests_to(HUB_PATH)) == 3

        time.sleep(2.1)  # past the handoff's retry time
        second = initiate(fixture_bytes(ACTIVITY_SET))
        assert second.status_code == 200 and body_json(second)["hub"] == {"status": "delivered"}
        third = initiate(fixture_bytes(ACTIVITY_SET))
        assert body_json(third)["hub"] == {"status": "delivered"}

        deliveries = verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)
        assert len(hub_env.requests_to(HUB_PATH)) == 4  # 3 failed attempts, then one success; nothing after "delivered"
        [(webhook_id, event)] = deliveries
        assert webhook_id == handoff_id and event["seq"] == 1
        # re-delivered with a freshly minted link of the same handoff (the first token is not stored to re-send)
        assert event["expiresAt"] == body_json(first)["expiresAt"]
        fresh = token_of(event["deepLink"])
        assert fresh.startswith(handoff_id) and fresh != body_json(first)["continuationToken"]
        assert "token." + hashlib.sha256(fresh.encode()).hexdigest() in partition_rows(tables, handoff_id)
        record = services.handoff_store(current_settings()).find(handoff_id)
        assert (record.settled_seq, record.retry_at, record.pending_since) == (1, None, None)

    def test_refused_for_good_is_failed_and_not_retried(self, hub_env, tables) -> None:
        hub_env.script(HUB_PATH, Answer(400, {"error": "bad"}))
        assert body_json(initiate(fixture_bytes(ACTIVITY_SET)))["hub"] == {"status": "failed"}
        assert body_json(initiate(fixture_bytes(ACTIVITY_SET)))["hub"] == {"status": "failed"}
        assert len(hub_env.requests_to(HUB_PATH)) == 1
        # nothing is owed to the hub: no retry is scheduled (only each initiate's safety net, which finds nothing)
        handoff_id = body_json(initiate(fixture_bytes(ACTIVITY_SET)))["handoffId"]
        record = services.handoff_store(current_settings()).find(handoff_id)
        assert not record.unsettled and record.retry_at is None
        delivers = [d for d in due_rows(tables) if d.kind.value == "deliver"]
        assert 1 <= len(delivers) <= 3
        assert all(d.at <= datetime.now(timezone.utc) + timedelta(seconds=61) for d in delivers)

    def test_unreachable_hub_is_pending(self, env, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_HUB_URL", f"http://127.0.0.1:{free_port()}/hook")
        monkeypatch.setenv("HANDOFF_HUB_SECRET", HUB_SECRET)
        response = initiate(fixture_bytes(ACTIVITY_SET))
        assert response.status_code == 201 and body_json(response)["hub"] == {"status": "pending"}


class TestRepeats:
    def test_repeat_answers_200_with_the_same_handoff_and_a_new_token(self, hub_env) -> None:
        first = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        response = initiate(fixture_bytes(ACTIVITY_SET))
        assert response.status_code == 200
        second = body_json(response)
        assert set(second) == FIELDS
        assert second["handoffId"] == first["handoffId"]
        assert second["expiresAt"] == first["expiresAt"]
        assert second["continuationToken"] != first["continuationToken"]
        assert len(hub_env.requests_to(HUB_PATH)) == 1

    def test_same_event_in_a_single_activity_body_is_the_same_handoff(self, env) -> None:
        first = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        again = initiate(handoff_event())
        assert again.status_code == 200 and body_json(again)["handoffId"] == first["handoffId"]

    def test_other_activity_id_is_another_handoff(self, env) -> None:
        first = body_json(initiate(handoff_event()))
        other = initiate(handoff_event(id="91hcXEd0ZYCBPoRwBDPHZ6-o|0000009"))
        assert other.status_code == 201 and body_json(other)["handoffId"] != first["handoffId"]

    def test_ten_concurrent_callbacks_make_one_handoff_and_one_delivery(self, hub_env, tables) -> None:
        barrier = threading.Barrier(10)
        responses = []

        def post() -> None:
            barrier.wait()
            responses.append(initiate(fixture_bytes(ACTIVITY_SET)))

        threads = [threading.Thread(target=post) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
        bodies = [body_json(r) for r in responses]
        assert len({b["handoffId"] for b in bodies}) == 1
        assert len({b["continuationToken"] for b in bodies}) == 10
        assert [webhook_id for webhook_id, _ in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)] == [bodies[0]["handoffId"]]
        records = [e for e in stored_rows(tables.handoffs) if e["RowKey"] == "handoff"]
        assert len(records) == 1 and records[0]["requestedDelivery"] == "delivered"
        tokens = [key for key in partition_rows(tables, bodies[0]["handoffId"]) if key.startswith("token.")]
        assert sorted(tokens) == sorted("token." + hashlib.sha256(b["continuationToken"].encode()).hexdigest() for b in bodies)


class TestRefusals:
    def test_no_handoff_event_is_204(self, env) -> None:
        messages = fixture(ACTIVITY_SET)["activities"][0]["attachments"][0]["content"]["activities"]
        response = initiate({"activities": messages, "watermark": "2"})
        assert response.status_code == 204 and response.get_body() == b""
        assert initiate(messages[0]).status_code == 204

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"not json", "invalid_activity"),
            (b"[]", "invalid_activity"),
            (b'{"foo": 1}', "invalid_activity"),
            (json.dumps({"activities": [handoff_event(conversation={})]}).encode(), "invalid_activity"),
            (json.dumps(handoff_event(value=[1])).encode(), "invalid_activity"),
        ],
    )
    def test_bad_input_is_400_with_an_actionable_json_error(self, env, body: bytes, code: str) -> None:
        response = initiate(body)
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == code and error["message"].endswith(".")
        assert "Traceback" not in error["message"]

    def test_invalid_binding_is_400(self, env) -> None:
        response = initiate(fixture_bytes(ACTIVITY_SET), params={"userId": "x\n" + "y" * 10})
        assert response.status_code == 400 and error_of(response)["code"] == "invalid_binding"

    def test_oversized_body_is_413_before_parsing(self, env, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_MAX_BODY_BYTES", "1000")
        response = initiate(b"{" * 1001)
        assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"
        assert initiate(fixture_bytes(ACTIVITY_SET), headers={"Content-Length": "999999"}).status_code == 413

    def test_invalid_setting_is_500_configuration_error(self, env, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_TOKEN_TTL_SECONDS", "soon")
        response = initiate(fixture_bytes(ACTIVITY_SET))
        assert response.status_code == 500
        error = error_of(response)
        assert error["code"] == "configuration_error" and "HANDOFF_TOKEN_TTL_SECONDS" in error["message"]

    def test_missing_bot_id_is_a_configuration_error_before_any_write(self, env, monkeypatch, tables) -> None:
        monkeypatch.setenv("MicrosoftAppId", "")
        response = initiate(fixture_bytes(ACTIVITY_SET))
        assert response.status_code == 500
        assert error_of(response)["code"] == "configuration_error" and "HANDOFF_BOT_ID" in error_of(response)["message"]
        assert stored_rows(tables.handoffs, tables.links, tables.due) == []

    def test_storage_unreachable_is_503_and_a_retry_completes(self, env, monkeypatch, tables) -> None:
        working = env["HANDOFF_STORAGE_CONNECTION"]
        monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", Azurite(port=free_port()).connection_string)
        response = initiate(fixture_bytes(ACTIVITY_SET))
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert error_of(response)["code"] == "storage_unavailable"

        monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", working)
        retried = initiate(fixture_bytes(ACTIVITY_SET))
        assert retried.status_code == 201


def test_no_plaintext_token_is_stored(hub_env, tables) -> None:
    tokens = [body_json(initiate(fixture_bytes(ACTIVITY_SET)))["continuationToken"] for _ in range(3)]
    tokens.append(body_json(initiate(handoff_event(id="other")))["continuationToken"])
    everything = repr(stored_rows(tables.handoffs, tables.links, tables.due))
    for token in tokens:
        assert token not in everything and token[32:] not in everything
        assert f"'RowKey': 'token.{hashlib.sha256(token.encode()).hexdigest()}'" in everything
    # the only rows a token leaves: token.<sha256> in its handoff's partition (besides the record, blobs, events)
    layout = re.compile(r"handoff|(document|transcript)\.\d{4}|token\.[0-9a-f]{64}|event\.\d{10}")
    assert all(layout.fullmatch(row["RowKey"]) for row in stored_rows(tables.handoffs))
    assert sum(row["RowKey"].startswith("token.") for row in stored_rows(tables.handoffs)) == 4


def test_one_log_line_per_outcome_without_the_token(hub_env, caplog) -> None:
    caplog.set_level("INFO")
    body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
    outcome = [r.getMessage() for r in caplog.records if r.getMessage().startswith("handoff recorded")]
    assert outcome == [f"handoff recorded: handoffId={body['handoffId']} hub=delivered"]
    assert all(body["continuationToken"][32:] not in r.getMessage() for r in caplog.records)
