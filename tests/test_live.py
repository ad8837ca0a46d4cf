"""The live conversation after the link: the user and the agent talk in the Teams chat (DESIGN "The life of a
handoff", handoff_action's other activities, handoff_hub, "Hub events", "Storage budgets").

In process through each function's `main`, against Azurite, the loopback Bot Framework and a loopback hub.
"""

from __future__ import annotations

import json
import time


from devtools.botframework import CONNECTOR_PATH, BotFramework
from devtools.loopback import Answer, LoopbackServer
from devtools.storagecount import StorageCounter
from shared import teams as say
from tests.conftest import HUB_PATH, HUB_SECRET
from tests.helpers import (
    ACTIVITY_SET,
    INVOKE,
    action,
    body_json,
    connect_user,
    error_of,
    fixture,
    fixture_bytes,
    handoff_event,
    hub_call,
    hub_events,
    initiate,
    invoke,
    run_concurrently,
    teams_activity,
    user_message,
)

OTHER_SECRET = "whsec_b3RoZXItc2VjcmV0LW5vdC10aGUtaHVicy1vbmUtYXQtYWxs"


def user_saw(botframework: BotFramework) -> list[str]:
    """What the user saw, in order: message texts, and `typing` for typing indicators."""
    return [a.get("text") or a["type"] for a in botframework.sent_activities()]


def relayed(hub: LoopbackServer) -> list[dict]:
    return [e for e in hub_events(hub, HUB_PATH) if e["type"] == "handoff.message"]


class TestRedemptionLinksTheChat:
    def test_the_user_is_told_where_the_agent_side_stands_and_the_hub_that_the_user_arrived(self, hub_env, botframework) -> None:
        created = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        assert hub_call(created["handoffId"], {"type": "queued", "position": 2, "waitSeconds": 300}, secret=HUB_SECRET).status_code == 202
        response = action(invoke(created["continuationToken"], service_url=botframework.service_url), jwt=botframework.jwt())
        assert response.status_code == 200 and response.get_body() == b""

        sent = botframework.sent_activities()
        assert [a["type"] for a in sent] == ["message", "typing", "message", "message"]
        assert sent[3]["text"] == f"{say.WAITING} You're number 2 in line. Expected wait: about 5 minutes."
        card = sent[3]["attachments"][0]["content"]
        assert card["actions"] == [
            {"type": "Action.Submit", "title": "End chat", "data": {"handoff": "end", "handoffId": created["handoffId"]}}
        ]
        events = hub_events(hub_env, HUB_PATH)
        assert [(e["type"], e["seq"]) for e in events] == [("handoff.requested", 1), ("handoff.connected", 2)]
        connected = events[1]
        assert connected["user"]["aadObjectId"] == fixture(INVOKE)["from"]["aadObjectId"]
        assert connected["tenantId"] == fixture(INVOKE)["conversation"]["tenantId"] and connected["locale"] == "en-US"

    def test_an_agent_who_already_accepted_is_named(self, hub_env, botframework) -> None:
        created = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        hub_call(created["handoffId"], {"type": "accepted", "agent": {"name": "Dana"}}, secret=HUB_SECRET)
        action(invoke(created["continuationToken"], service_url=botframework.service_url), jwt=botframework.jwt())
        assert user_saw(botframework)[-1] == "Dana is ready for you."

    def test_the_same_user_opening_the_link_again_is_told_to_carry_on(self, live, botframework) -> None:
        again = body_json(initiate(fixture_bytes(ACTIVITY_SET)))["continuationToken"]  # a newer link of the same handoff
        action(invoke(again, service_url=botframework.service_url), jwt=botframework.jwt())
        assert user_saw(botframework) == [say.ALREADY_CONNECTED]

    def test_a_token_of_an_ended_handoff_cannot_continue(self, hub_env, botframework) -> None:
        created = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        hub_call(created["handoffId"], {"type": "failed"}, secret=HUB_SECRET)
        action(invoke(created["continuationToken"], service_url=botframework.service_url), jwt=botframework.jwt())
        assert user_saw(botframework) == [say.CANNOT_CONTINUE]

    def test_a_group_chat_is_answered_as_an_unknown_token_and_consumes_nothing(self, hub_env, botframework) -> None:
        token = body_json(initiate(fixture_bytes(ACTIVITY_SET)))["continuationToken"]
        group = {**fixture(INVOKE)["conversation"], "conversationType": "groupChat", "id": "19:group@thread.v2"}
        action(invoke(token, service_url=botframework.service_url, conversation=group), jwt=botframework.jwt())
        assert user_saw(botframework) == [say.CANNOT_CONTINUE]
        botframework.connector.clear()
        action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt())
        assert user_saw(botframework)[0].startswith("You're continuing")

    def test_a_second_handoff_redeemed_in_the_chat_supersedes_the_first(self, hub_env, botframework) -> None:
        first = connect_user(botframework)
        second = connect_user(botframework, event=handoff_event(id="a-later-escalation"))
        ended = [e for e in hub_events(hub_env, HUB_PATH) if e["type"] == "handoff.ended"]
        assert [(e["handoffId"], e["reason"]) for e in ended] == [(first, "superseded")]
        action(user_message("which one gets this?", service_url=botframework.service_url), jwt=botframework.jwt())
        assert [(e["handoffId"], e["text"]) for e in relayed(hub_env)] == [(second, "which one gets this?")]
        assert hub_call(first, {"type": "message", "text": "late"}, secret=HUB_SECRET).status_code == 409


class TestUserToHub:
    def test_a_message_reaches_the_hub_signed_numbered_and_as_teams_sent_it(self, live, hub_env, botframework) -> None:
        from standardwebhooks import Webhook

        message = user_message("My order hasn't arrived", service_url=botframework.service_url,
                               attachments=[{"contentType": "image/png", "contentUrl": "https://example.invalid/a.png", "name": "a.png"}])
        response = action(message, jwt=botframework.jwt())
        assert response.status_code == 200 and response.get_body() == b""
        request = hub_env.requests_to(HUB_PATH)[-1]
        event = Webhook(HUB_SECRET).verify(request.body, request.headers)
        assert event["type"] == "handoff.message" and event["seq"] == 3 and event["handoffId"] == live
        assert request.header("webhook-id") == f"{live}:3"
        assert event["messageId"] == message["id"] and event["text"] == "My order hasn't arrived" and event["textFormat"] == "plain"
        assert event["attachments"] == message["attachments"]
        assert event["user"] == {"id": message["from"]["id"], "aadObjectId": message["from"]["aadObjectId"]}
        assert botframework.sent_activities() == []  # nothing echoed to the user

    def test_a_message_teams_delivers_twice_is_relayed_once(self, live, hub_env, botframework) -> None:
        message = user_message("once", service_url=botframework.service_url)
        results = run_concurrently([lambda: action(message, jwt=botframework.jwt()) for _ in range(6)])
        assert {r.status_code for r in results} == {200}
        assert [e["text"] for e in relayed(hub_env)] == ["once"]

    def test_concurrent_messages_get_unique_gap_free_seqs_and_reach_the_hub_in_seq_order(self, live, hub_env, botframework) -> None:
        messages = [user_message(f"m{i}", service_url=botframework.service_url) for i in range(10)]
        results = run_concurrently([lambda m=m: action(m, jwt=botframework.jwt()) for m in messages])
        assert [r.status_code for r in results] == [200] * 10
        seqs = [e["seq"] for e in relayed(hub_env)]
        assert seqs == list(range(3, 13)), seqs  # posted in seq order, each once, no gap
        assert sorted(e["text"] for e in relayed(hub_env)) == sorted(f"m{i}" for i in range(10))

    def test_edits_and_deletes_are_relayed_each_time(self, live, hub_env, botframework) -> None:
        message = user_message("helo", service_url=botframework.service_url)
        action(message, jwt=botframework.jwt())
        for text in ("hello", "hello!"):
            action(teams_activity("messageUpdate", service_url=botframework.service_url, id=message["id"], text=text), jwt=botframework.jwt())
        action(teams_activity("messageDelete", service_url=botframework.service_url, id=message["id"]), jwt=botframework.jwt())
        tail = [(e["type"], e.get("text"), e["messageId"]) for e in hub_events(hub_env, HUB_PATH)[-4:]]
        assert tail == [
            ("handoff.message", "helo", message["id"]),
            ("handoff.message_updated", "hello", message["id"]),
            ("handoff.message_updated", "hello!", message["id"]),
            ("handoff.message_deleted", None, message["id"]),
        ]

    def test_end_chat_ends_the_handoff_and_an_older_button_changes_nothing(self, live, hub_env, botframework) -> None:
        end = {"handoff": "end", "handoffId": live}
        assert action(user_message("", service_url=botframework.service_url, value=end), jwt=botframework.jwt()).status_code == 200
        assert user_saw(botframework) == [say.USER_ENDED]
        assert hub_events(hub_env, HUB_PATH)[-1] == {**hub_events(hub_env, HUB_PATH)[-1], "type": "handoff.ended", "reason": "user_ended"}
        botframework.connector.clear()
        action(user_message("", service_url=botframework.service_url, value=end), jwt=botframework.jwt())
        action(user_message("anyone there?", service_url=botframework.service_url), jwt=botframework.jwt())
        assert user_saw(botframework) == [say.ALREADY_CLOSED, say.NO_OPEN_CONVERSATION]
        assert [e["type"] for e in hub_events(hub_env, HUB_PATH)].count("handoff.ended") == 1
        assert hub_call(live, {"type": "message", "text": "hello?"}, secret=HUB_SECRET).status_code == 409

    def test_the_bots_removal_ends_the_handoff_silently(self, live, hub_env, botframework) -> None:
        removal = teams_activity("installationUpdate", service_url=botframework.service_url, action="remove")
        assert action(removal, jwt=botframework.jwt()).status_code == 200
        assert botframework.sent_activities() == []
        assert hub_events(hub_env, HUB_PATH)[-1]["reason"] == "undeliverable"

    def test_a_message_with_no_open_handoff_gets_the_polite_reply(self, hub_env, botframework) -> None:
        action(user_message("hello?", service_url=botframework.service_url), jwt=botframework.jwt())
        assert user_saw(botframework) == [say.NO_OPEN_CONVERSATION]
        assert hub_events(hub_env, HUB_PATH) == []

    def test_typing_and_other_activities_do_nothing(self, live, hub_env, botframework) -> None:
        before = len(hub_env.requests)
        for kind in ("typing", "conversationUpdate", "messageReaction"):
            assert action(teams_activity(kind, service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200
        assert len(hub_env.requests) == before and botframework.sent_activities() == []

    def test_another_invoke_is_501(self, live, botframework) -> None:
        response = action(teams_activity("invoke", service_url=botframework.service_url, name="composeExtension/query"), jwt=botframework.jwt())
        assert response.status_code == 501 and error_of(response)["code"] == "not_implemented"

    def test_forged_activities_are_refused_and_relay_nothing(self, live, hub_env, botframework) -> None:
        before = len(hub_env.requests)
        message = user_message("forged", service_url=botframework.service_url)
        for jwt in (None, botframework.jwt(key="unpublished"), botframework.jwt(claims={"aud": "someone-else"}),
                    botframework.jwt(service_url="https://evil.example/")):
            assert action(message, jwt=jwt).status_code == 401
        assert len(hub_env.requests) == before and botframework.sent_activities() == []


class TestHubDown:
    def test_a_burst_while_the_hub_is_down_waits_in_order_and_goes_out_once_when_it_is_back(
        self, live, hub_env, botframework, monkeypatch
    ) -> None:
        monkeypatch.setenv("HANDOFF_HUB_RETRY_SECONDS", "1")
        hub_env.route(HUB_PATH, lambda r: Answer(503, {"down": True}))
        started = time.monotonic()
        for i in range(5):
            assert action(user_message(f"b{i}", service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200
        # Only the first message waited on the hub; the others were stored behind it at once.
        attempts = [r.json()["seq"] for r in hub_env.requests_to(HUB_PATH) if r.status == 503]
        assert set(attempts) == {3}
        assert time.monotonic() - started < 9.0 * 2
        hub_env.route(HUB_PATH, lambda r: Answer(202, {}))
        time.sleep(2.1)  # the handoff's retry is due: the next message delivers everything before it, in order
        assert action(user_message("back", service_url=botframework.service_url), jwt=botframework.jwt()).status_code == 200
        assert [e["text"] for e in relayed(hub_env)] == ["b0", "b1", "b2", "b3", "b4", "back"]
        assert [e["seq"] for e in relayed(hub_env)] == list(range(3, 9))

    def test_a_message_that_cannot_even_be_recorded_is_503_and_the_user_is_told(self, live, botframework, monkeypatch, azurite) -> None:
        from devtools.loopback import free_port

        from shared import services

        services.reset()
        dead = azurite.connection_string.replace(str(azurite.port), str(free_port()))
        monkeypatch.setenv("HANDOFF_STORAGE_CONNECTION", dead)
        response = action(user_message("lost?", service_url=botframework.service_url), jwt=botframework.jwt())
        assert response.status_code == 503 and response.headers.get("Retry-After")
        assert user_saw(botframework) == [say.NOT_PASSED_ON]


class TestHubToUser:
    def test_each_event_type_is_shown_as_the_contract_says(self, live, botframework) -> None:
        calls = [
            ({"type": "queued", "position": 4, "waitSeconds": 60}, "You're number 4 in line. Expected wait: about 1 minute."),
            ({"type": "queued", "message": "Busy day, hang on"}, "Busy day, hang on"),
            ({"type": "accepted", "agent": {"name": "Dana"}}, "Dana has joined the conversation."),
            ({"type": "message", "text": "How can I help?", "agent": {"name": "Dana"}}, "**Dana:** How can I help?"),
            ({"type": "message", "text": "plain words"}, "plain words"),
            ({"type": "typing"}, "typing"),
            ({"type": "completed"}, say.completed_text("Dana")),
        ]
        for event, _ in calls:
            response = hub_call(live, event, secret=HUB_SECRET)
            assert response.status_code == 200, response.get_body()
            body = body_json(response)
            assert body["connected"] is True and body["delivered"] is True and len(body["activityIds"]) == 1
        assert user_saw(botframework) == [shown for _, shown in calls]
        assert body_json(response)["state"] == "ended"

    def test_failed_and_attachments(self, live, botframework) -> None:
        card = {"contentType": "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard", "version": "1.4", "body": []}}
        assert hub_call(live, {"type": "message", "attachments": [card]}, secret=HUB_SECRET).status_code == 200
        assert botframework.sent_activities()[-1]["attachments"] == [card]
        assert hub_call(live, {"type": "failed"}, secret=HUB_SECRET).status_code == 200
        assert user_saw(botframework)[-1] == say.FAILED

    def test_before_the_user_connects(self, hub_env, botframework) -> None:
        handoff_id = body_json(initiate(fixture_bytes(ACTIVITY_SET)))["handoffId"]
        queued = hub_call(handoff_id, {"type": "queued", "position": 1}, secret=HUB_SECRET)
        assert queued.status_code == 202
        assert body_json(queued) == {"handoffId": handoff_id, "state": "requested", "connected": False, "delivered": False}
        for event in ({"type": "message", "text": "hi"}, {"type": "typing"}):
            refused = hub_call(handoff_id, event, secret=HUB_SECRET)
            assert refused.status_code == 409 and error_of(refused)["code"] == "not_connected"
        assert botframework.sent_activities() == []

    def test_unknown_handoff_is_404(self, hub_env) -> None:
        response = hub_call("a" * 32, {"type": "queued"}, secret=HUB_SECRET)
        assert response.status_code == 404 and error_of(response)["code"] == "handoff_not_found"

    def test_a_repeat_answers_the_same_and_sends_nothing_again_even_after_the_end(self, live, botframework) -> None:
        first = hub_call(live, {"type": "message", "text": "once only"}, secret=HUB_SECRET, webhook_id="msg_1")
        hub_call(live, {"type": "completed"}, secret=HUB_SECRET)
        again = hub_call(live, {"type": "message", "text": "once only"}, secret=HUB_SECRET, webhook_id="msg_1", timestamp=int(time.time()) + 1)
        assert again.status_code == 200 and again.get_body() == first.get_body()
        assert user_saw(botframework).count("once only") == 1
        reused = hub_call(live, {"type": "message", "text": "something else"}, secret=HUB_SECRET, webhook_id="msg_1")
        assert reused.status_code == 409 and error_of(reused)["code"] == "idempotency_key_reused"

    def test_twenty_concurrent_calls_with_one_webhook_id_send_one_message(self, live, botframework) -> None:
        results = run_concurrently(
            [lambda: hub_call(live, {"type": "message", "text": "just once"}, secret=HUB_SECRET, webhook_id="msg_same") for _ in range(20)]
        )
        statuses = sorted(r.status_code for r in results)
        assert user_saw(botframework) == ["just once"]
        assert set(statuses) <= {200, 409}
        assert all(error_of(r)["code"] == "in_progress" and r.headers.get("Retry-After") for r in results if r.status_code == 409)

    def test_racing_completed_and_message(self, live, botframework) -> None:
        for round_ in range(3):
            results = run_concurrently([
                lambda: hub_call(live, {"type": "message", "text": f"race {round_}"}, secret=HUB_SECRET),
                lambda: hub_call(live, {"type": "queued", "position": 1}, secret=HUB_SECRET),
            ])
            assert {r.status_code for r in results} == {200}
        completed, message = run_concurrently([
            lambda: hub_call(live, {"type": "completed"}, secret=HUB_SECRET),
            lambda: hub_call(live, {"type": "message", "text": "last words"}, secret=HUB_SECRET),
        ])
        assert completed.status_code == 200
        assert message.status_code in (200, 409)
        shown = user_saw(botframework)
        ended_at = shown.index(say.completed_text(None))
        if message.status_code == 409:
            assert error_of(message)["code"] == "handoff_ended" and "last words" not in shown
        else:  # the message won the race: it was shown before the end, never after
            assert shown.index("last words") < ended_at
        assert hub_call(live, {"type": "queued"}, secret=HUB_SECRET).status_code == 409

    def test_a_message_too_large_for_teams_is_413(self, live, botframework) -> None:
        big = {"contentType": "application/vnd.microsoft.card.adaptive", "content": {"type": "AdaptiveCard", "body": [{"type": "TextBlock", "text": "x" * 90_000}]}}
        response = hub_call(live, {"type": "message", "attachments": [big]}, secret=HUB_SECRET)
        assert response.status_code == 413 and error_of(response)["code"] == "message_too_large"
        assert botframework.sent_activities() == []

    def test_connector_refusal_is_502_and_only_the_end_is_recorded(self, live, botframework) -> None:
        botframework.connector.script(CONNECTOR_PATH, Answer(403, {"error": {"code": "BotDisabledByUser"}}))
        refused = hub_call(live, {"type": "accepted", "agent": {"name": "Dana"}}, secret=HUB_SECRET, webhook_id="acc")
        assert refused.status_code == 502
        retried = hub_call(live, {"type": "accepted", "agent": {"name": "Dana"}}, secret=HUB_SECRET, webhook_id="acc")
        assert retried.status_code == 200  # nothing was recorded: the retry acts
        botframework.connector.script(CONNECTOR_PATH, Answer(403, {}))
        assert hub_call(live, {"type": "completed"}, secret=HUB_SECRET).status_code == 502
        assert hub_call(live, {"type": "queued"}, secret=HUB_SECRET).status_code == 409  # yet the handoff ended

    def test_connector_down_is_503_nothing_recorded_and_a_retry_acts_once(self, live, botframework) -> None:
        botframework.connector.script(CONNECTOR_PATH, *[Answer(503, {})] * 4)
        down = hub_call(live, {"type": "completed"}, secret=HUB_SECRET, webhook_id="end-1")
        assert down.status_code == 503 and down.headers.get("Retry-After")
        assert hub_call(live, {"type": "queued", "position": 1}, secret=HUB_SECRET).status_code == 200  # not ended
        retried = hub_call(live, {"type": "completed"}, secret=HUB_SECRET, webhook_id="end-1")
        assert retried.status_code == 200 and body_json(retried)["state"] == "ended"

    def test_body_errors_are_400_after_the_signature(self, live) -> None:
        for body in (b"not json", json.dumps({"handoffId": live, "type": "dance"}).encode(),
                     json.dumps({"handoffId": "b" * 32, "type": "typing"}).encode(),
                     json.dumps({"handoffId": live, "type": "message"}).encode()):
            response = hub_call(live, body, secret=HUB_SECRET)
            assert response.status_code == 400, body
        for bad_id in ("has space", "x" * 201, "caf\u00e9"):
            response = hub_call(live, {"type": "typing"}, secret=HUB_SECRET, webhook_id=bad_id)
            assert response.status_code == 400 and error_of(response)["code"] == "invalid_webhook_id"


class TestHubSignature:
    def test_the_signature_matrix(self, live, monkeypatch) -> None:
        now = int(time.time())
        refused = {
            "no signature": hub_call(live, {"type": "typing"}, secret=None),
            "wrong secret": hub_call(live, {"type": "typing"}, secret=OTHER_SECRET),
            "stale": hub_call(live, {"type": "typing"}, secret=HUB_SECRET, timestamp=now - 301),
            "future": hub_call(live, {"type": "typing"}, secret=HUB_SECRET, timestamp=now + 301),
            "no id": hub_call(live, {"type": "typing"}, secret=HUB_SECRET, headers={"webhook-id": ""}),
            "no timestamp": hub_call(live, {"type": "typing"}, secret=HUB_SECRET, headers={"webhook-timestamp": ""}),
            "not an integer": hub_call(live, {"type": "typing"}, secret=HUB_SECRET, headers={"webhook-timestamp": f"{now}.0"}),
        }
        for what, response in refused.items():
            assert response.status_code == 401, what
            assert error_of(response)["code"] == "unauthorized" and "HANDOFF_HUB_SECRET" in error_of(response)["message"]
        # a tampered body: signed, then changed
        from shared.webhooks import WebhookSecret, sign

        body = json.dumps({"handoffId": live, "type": "typing"}).encode()
        signature = sign([WebhookSecret(HUB_SECRET)], "t1", now, body)
        tampered = hub_call(live, body.replace(b"typing", b"queued"), secret=None,
                            headers={"webhook-id": "t1", "webhook-signature": signature})
        assert tampered.status_code == 401
        # several signatures in one header: one matching is enough
        several = f"v1,{'A' * 44} {signature}"
        assert hub_call(live, body, secret=None, webhook_id="t1", timestamp=now, headers={"webhook-signature": several}).status_code == 200
        # during a rotation the previous secret is accepted too
        monkeypatch.setenv("HANDOFF_HUB_SECRET", OTHER_SECRET)
        monkeypatch.setenv("HANDOFF_HUB_SECRET_PREVIOUS", HUB_SECRET)
        assert hub_call(live, {"type": "typing"}, secret=HUB_SECRET).status_code == 200
        assert hub_call(live, {"type": "typing"}, secret=OTHER_SECRET).status_code == 200

    def test_without_a_secret_or_with_a_malformed_one_it_is_a_configuration_error(self, live, monkeypatch) -> None:
        monkeypatch.delenv("HANDOFF_HUB_SECRET")
        response = hub_call(live, {"type": "typing"}, secret=HUB_SECRET)
        assert response.status_code == 500 and error_of(response)["code"] == "configuration_error"
        assert "HANDOFF_HUB_SECRET" in error_of(response)["message"]
        monkeypatch.setenv("HANDOFF_HUB_SECRET", "not-a-whsec-secret")
        response = hub_call(live, {"type": "typing"}, secret=HUB_SECRET)
        assert response.status_code == 500 and "HANDOFF_HUB_SECRET" in error_of(response)["message"]

    def test_our_events_verify_with_the_standard_webhooks_library_with_both_secrets_in_a_rotation(
        self, env, hub, monkeypatch, botframework
    ) -> None:
        from standardwebhooks import Webhook

        monkeypatch.setenv("HANDOFF_HUB_URL", hub.url + HUB_PATH)
        monkeypatch.setenv("HANDOFF_HUB_SECRET", OTHER_SECRET)
        monkeypatch.setenv("HANDOFF_HUB_SECRET_PREVIOUS", HUB_SECRET)
        initiate(fixture_bytes(ACTIVITY_SET))
        request = hub.requests_to(HUB_PATH)[-1]
        for secret in (OTHER_SECRET, HUB_SECRET):
            assert Webhook(secret).verify(request.body, request.headers)["type"] == "handoff.requested"
        assert len(request.header("webhook-signature").split(" ")) == 2


class TestStorageBudgets:
    """DESIGN "Storage budgets", counted at a proxy between the app and Azurite (a warm instance: table
    creation, once per process and table, is not counted)."""

    def test_each_path_within_its_budget_and_no_scan(self, hub_env, botframework, storage_counter: StorageCounter) -> None:
        from shared import services

        services.reset()
        created = body_json(initiate(fixture_bytes(ACTIVITY_SET)))
        warm = body_json(initiate(handoff_event(id="warm-up")))  # creates the remaining tables
        action(invoke(warm["continuationToken"], service_url=botframework.service_url,
                      conversation={**fixture(INVOKE)["conversation"], "id": "a:warm-up-chat"}), jwt=botframework.jwt())

        def counted(call) -> dict[str, int]:
            storage_counter.reset()
            response = call()
            assert response.status_code in (200, 202), response.get_body()
            return storage_counter.counts()

        redemption = counted(lambda: action(invoke(created["continuationToken"], service_url=botframework.service_url), jwt=botframework.jwt()))
        relay = counted(lambda: action(user_message("hi", service_url=botframework.service_url), jwt=botframework.jwt()))
        to_user = counted(lambda: hub_call(created["handoffId"], {"type": "message", "text": "hello"}, secret=HUB_SECRET))
        status = counted(lambda: hub_call(created["handoffId"], {"type": "accepted", "agent": {"name": "Dana"}}, secret=HUB_SECRET))
        typing = counted(lambda: hub_call(created["handoffId"], {"type": "typing"}, secret=HUB_SECRET))
        for counts in (redemption, relay, to_user, status):
            assert counts["scan"] == 0 and counts["query"] == 0 and counts["table"] == 0, counts
        assert redemption["read"] <= 2 and redemption["write"] <= 3, redemption
        assert relay["read"] <= 2 and relay["write"] <= 2, relay
        assert to_user["read"] <= 1 and to_user["write"] <= 2, to_user
        assert status["read"] <= 1 and status["write"] <= 2, status
        # typing is never recorded: no write; two point reads (the record, and the call's key row, so that a
        # reused webhook-id is still refused), never a query
        assert typing == {"read": 2, "query": 0, "write": 0, "table": 0, "scan": 0}
        assert [e["type"] for e in hub_events(hub_env, HUB_PATH)][-2:] == ["handoff.connected", "handoff.message"]


class TestRedemptionMeetsTheHub:
    def test_a_hub_status_during_the_redemption_is_shown_in_the_continuation_or_after_it(self, hub_env, botframework) -> None:
        for round_ in range(6):
            created = body_json(initiate(handoff_event(id=f"race-{round_}")))
            chat = {**fixture(INVOKE)["conversation"], "id": f"a:race-chat-{round_}"}
            botframework.connector.clear()
            redeemed, accepted = run_concurrently([
                lambda: action(invoke(created["continuationToken"], service_url=botframework.service_url, conversation=chat), jwt=botframework.jwt()),
                lambda: hub_call(created["handoffId"], {"type": "accepted", "agent": {"name": "Dana"}}, secret=HUB_SECRET),
            ])
            assert redeemed.status_code == 200
            assert accepted.status_code in (200, 202), accepted.get_body()
            shown = user_saw(botframework)
            assert shown[0].startswith("You're continuing")
            if accepted.status_code == 202:  # recorded first: the continuation says so
                assert shown[-1] == "Dana is ready for you.", shown
            else:  # recorded after the user connected: sent after the continuation
                assert shown[-1] == "Dana has joined the conversation." and shown[3].startswith(say.WAITING), shown


class TestHostileInput:
    """Fuzzed hub calls (signed, so they reach the parser and the state machine) and Teams activities (with a
    valid JWT): every answer is an answer of the contract, never a 5xx."""

    def test_fuzzed_hub_bodies(self, live) -> None:
        from hypothesis import HealthCheck, given, settings, strategies as st

        scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=30))
        values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
        types = st.sampled_from(["queued", "accepted", "message", "typing", "completed", "failed", "other", ""]) | st.text(max_size=5)
        field_names = st.sampled_from(["position", "waitSeconds", "message", "agent", "text", "textFormat", "attachments", "handoffId"])
        bodies = st.builds(lambda t, extra: {"type": t, **extra}, types, st.dictionaries(field_names, values, max_size=4))

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies, raw=st.booleans(), junk=st.binary(max_size=60))
        def check(body, raw, junk) -> None:
            payload = junk if raw else json.dumps({"handoffId": live, **body}).encode()
            response = hub_call(live, payload, secret=HUB_SECRET)
            assert response.status_code in (200, 202, 400, 404, 409, 413), (response.status_code, response.get_body())
            if response.status_code >= 400:
                error_of(response)

        check()

    def test_fuzzed_teams_activities(self, live, botframework) -> None:
        from hypothesis import HealthCheck, given, settings, strategies as st

        scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False))
        kinds = st.sampled_from(["message", "messageUpdate", "messageDelete", "installationUpdate", "typing", "invoke", "event"])
        fields = st.dictionaries(
            st.sampled_from(["text", "textFormat", "value", "attachments", "action", "id", "timestamp", "conversation", "from", "locale"]),
            st.one_of(scalars, st.dictionaries(st.sampled_from(["handoff", "handoffId", "id", "conversationType"]), scalars, max_size=3),
                      st.lists(st.dictionaries(st.sampled_from(["contentType", "content", "contentUrl"]), scalars, max_size=3), max_size=2)),
            max_size=4,
        )

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(kind=kinds, changes=fields)
        def check(kind, changes) -> None:
            activity = teams_activity(kind, service_url=botframework.service_url)
            activity.update(changes)
            response = action(activity, jwt=botframework.jwt())
            assert response.status_code in (200, 400, 501), (response.status_code, response.get_body())

        check()


class TestTheHubGuide:
    def test_the_readme_curl_recipe_signs_a_call_the_app_accepts(self, live, botframework) -> None:
        """The README's curl + openssl lines, run as written (the curl swapped for printing what it would send)."""
        import re
        import subprocess
        from pathlib import Path

        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
        section = readme.split("### Calling the app", 1)[1]
        script = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
        script = script.replace("SECRET=whsec_...", f"SECRET={HUB_SECRET}").replace("HANDOFF=<handoffId>", f"HANDOFF={live}")
        assert "curl -s -X POST" in script
        script = script[: script.index("curl -s -X POST")] + 'printf "%s\\n%s\\n%s\\n%s" "$ID" "$TS" "v1,$SIG" "$BODY"\n'
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20, check=True).stdout.split("\n")
        webhook_id, stamp, signature, body = out[0], out[1], out[2], out[3]
        response = hub_call(live, body.encode(), secret=None,
                            headers={"webhook-id": webhook_id, "webhook-timestamp": stamp, "webhook-signature": signature})
        assert response.status_code == 200, response.get_body()
        assert user_saw(botframework) == ["You're number 2 in line. Expected wait: about 3 minutes."]
