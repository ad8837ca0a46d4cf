"""POST /api/handoff/initiate, in process, against Azurite and a loopback engagement hub."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from shared import services
from shared.settings import current_settings
from tests.conftest import HUB_PATH, HUB_SECRET
from tests.helpers import ACTIVITY_SET, body_json, error_of, fixture, fixture_bytes, handoff_event, initiate
from devtools.loopback import Answer, Azurite, free_port
from devtools.payloads import transcript_activities

FIELDS = {"handoffId", "conversationId", "continuationToken", "deepLink", "expiresAt", "hub", "card"}


def stored_blob(handoff_id: str, name: str) -> bytes | None:
    return services.handoff_store(current_settings()).read_blob(handoff_id, name)


def verify_signature(request) -> bool:
    timestamp = request.header("X-Handoff-Timestamp")
    expected = "sha256=" + hmac.new(HUB_SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, request.header("X-Handoff-Signature") or "")


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

        token = body["continuationToken"]
        assert len(token) >= 22 and token.replace("-", "").replace("_", "").isalnum()
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
        record = services.handoff_store(current_settings()).get(handoff_id)
        assert (record.user_id, record.tenant_id) == ("user-1", "tenant-1")

    def test_three_thousand_activity_transcript_round_trip(self, hub_env) -> None:
        activities = transcript_activities(3000)
        event = handoff_event()
        event["attachments"][0]["content"] = json.dumps({"activities": activities})
        assert len(event["attachments"][0]["content"]) > 1_500_000
        response = initiate({"activities": [event]})
        assert response.status_code == 201
        handoff_id = body_json(response)["handoffId"]
        assert stored_blob(handoff_id, "transcript") == event["attachments"][0]["content"].encode()
        delivered = hub_env.requests_to(HUB_PATH)[0].json()
        assert delivered["transcript"]["activities"] == activities

    def test_content_url_transcript_is_recorded_and_forwarded_as_reference(self, hub_env) -> None:
        event = handoff_event(attachments=[{"name": "Transcript", "contentType": "application/json", "contentUrl": "https://files.example/t.json"}])
        response = initiate(event)
        assert response.status_code == 201
        handoff_id = body_json(response)["handoffId"]
        assert stored_blob(handoff_id, "transcript") is None
        reference = {"contentUrl": "https://files.example/t.json", "contentType": "application/json"}
        assert json.loads(stored_blob(handoff_id, "document"))["transcriptReference"] == reference
        assert hub_env.requests_to(HUB_PATH)[0].json()["transcript"] == reference


class TestHubWebhook:
    def test_signed_idempotent_event(self, hub_env) -> None:
        body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        [request] = hub_env.requests_to(HUB_PATH)
        assert request.method == "POST"
        assert request.header("Idempotency-Key") == body["handoffId"]
        assert abs(int(request.header("X-Handoff-Timestamp")) - datetime.now(timezone.utc).timestamp()) < 30
        assert verify_signature(request)
        event = request.json()
        assert event["type"] == "handoff.requested"
        assert event["handoffId"] == body["handoffId"]
        assert event["deepLink"] == body["deepLink"]
        assert event["conversation"]["id"] == "91hcXEd0ZYCBPoRwBDPHZ6-o"
        assert event["conversation"]["user"]["name"] == "C2 User"
        original = fixture(ACTIVITY_SET)["activities"][0]
        assert event["context"] == original["value"]
        assert event["transcript"] == original["attachments"][0]["content"]
        assert event["createdAt"].endswith("Z")

    def test_tampered_body_fails_the_signature(self, hub_env) -> None:
        initiate(fixture_bytes(ACTIVITY_SET))
        [request] = hub_env.requests_to(HUB_PATH)
        request.body = request.body.replace(b"store hours", b"store hourz")
        assert not verify_signature(request)

    def test_no_secret_no_signature(self, hub_env, monkeypatch) -> None:
        monkeypatch.delenv("HANDOFF_HUB_SECRET")
        initiate(fixture_bytes(ACTIVITY_SET))
        [request] = hub_env.requests_to(HUB_PATH)
        assert request.header("X-Handoff-Signature") is None and request.header("Idempotency-Key")

    def test_retries_429_honouring_retry_after(self, hub_env) -> None:
        hub_env.script(HUB_PATH, Answer(429, headers={"Retry-After": "1"}), Answer(503))
        body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        assert body["hub"] == {"status": "delivered"}
        assert len(hub_env.requests_to(HUB_PATH)) == 3
        assert len({r.header("Idempotency-Key") for r in hub_env.requests_to(HUB_PATH)}) == 1

    def test_pending_then_redelivered_by_a_repeat_exactly_once(self, hub_env) -> None:
        hub_env.script(HUB_PATH, *[Answer(503)] * 3)
        first = initiate(fixture_bytes(ACTIVITY_SET))
        assert first.status_code == 201 and body_json(first)["hub"] == {"status": "pending"}
        assert len(hub_env.requests_to(HUB_PATH)) == 3

        second = initiate(fixture_bytes(ACTIVITY_SET))
        assert second.status_code == 200 and body_json(second)["hub"] == {"status": "delivered"}
        third = initiate(fixture_bytes(ACTIVITY_SET))
        assert body_json(third)["hub"] == {"status": "delivered"}

        deliveries = hub_env.requests_to(HUB_PATH)
        assert len(deliveries) == 4  # 3 failed attempts, then one success; nothing after "delivered"
        assert {r.header("Idempotency-Key") for r in deliveries} == {body_json(first)["handoffId"]}

    def test_refused_for_good_is_failed_and_not_retried(self, hub_env) -> None:
        hub_env.script(HUB_PATH, Answer(400, {"error": "bad"}))
        assert body_json(initiate(fixture_bytes(ACTIVITY_SET)))["hub"] == {"status": "failed"}
        assert body_json(initiate(fixture_bytes(ACTIVITY_SET)))["hub"] == {"status": "failed"}
        assert len(hub_env.requests_to(HUB_PATH)) == 1

    def test_unreachable_hub_is_pending(self, env, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_HUB_URL", f"http://127.0.0.1:{free_port()}/hook")
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
        assert len(hub_env.requests_to(HUB_PATH)) == 1
        records = [e for e in tables.handoffs.list_entities() if e["RowKey"] == "handoff"]
        assert len(records) == 1 and records[0]["hubStatus"] == "delivered"
        assert len(list(tables.tokens.list_entities())) == 10


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
        assert list(tables.tokens.list_entities()) == [] and list(tables.handoffs.list_entities()) == []

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
    everything = ""
    for table in (tables.handoffs, tables.tokens):
        for entity in table.list_entities():
            everything += repr(dict(entity)) + repr(list(entity.keys()))
    for token in tokens:
        assert token not in everything
        assert hashlib.sha256(token.encode()).hexdigest() in everything


def test_one_log_line_per_outcome_without_the_token(hub_env, caplog) -> None:
    caplog.set_level("INFO")
    body = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
    outcome = [r.getMessage() for r in caplog.records if r.getMessage().startswith("handoff recorded")]
    assert outcome == [f"handoff recorded: handoffId={body['handoffId']} conversationId=91hcXEd0ZYCBPoRwBDPHZ6-o hub=delivered"]
    assert all(body["continuationToken"] not in r.getMessage() for r in caplog.records)
