"""POST /api/handoff/action, in process, against Azurite and a loopback Bot Framework."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

import pytest

from shared import services
from shared.botauth import OpenIdKeys
from shared.settings import current_settings
from shared.teams import ALREADY_CONNECTED, CANNOT_CONTINUE, NO_OPEN_CONVERSATION, WAITING
from devtools.botframework import APP_ID, CONNECTOR_PATH, BotFramework
from tests.conftest import HUB_PATH, HUB_SECRET
from tests.helpers import INVOKE, action, body_json, error_of, fixture, fixture_bytes, handoff_event, hub_call, initiate, invoke
from tests.helpers import ACTIVITY_SET, FORGED, as_user, in_chat, redeem, stored_rows, user_message, verified_hub_events
from devtools.loopback import Answer, LoopbackServer

USER = "57162b23-ae6f-4e95-9774-27f7cb019864"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def mint(params: dict[str, str] | None = None, event: dict | None = None) -> str:
    response = initiate(event or fixture_bytes(ACTIVITY_SET), params=params)
    assert response.status_code in (200, 201), response.get_body()
    return body_json(response)["continuationToken"]


def texts(botframework: BotFramework) -> list[str | None]:
    return [a.get("text") for a in botframework.sent_activities()]


def assert_continued(botframework: BotFramework, handoff_id: str | None = None) -> list[dict]:
    """The four continuation messages: continuing, typing, the reminder, where the agent side stands with End chat."""
    sent = botframework.sent_activities()
    assert [a["type"] for a in sent] == ["message", "typing", "message", "message"], texts(botframework)
    assert "continuing your earlier conversation" in sent[0]["text"]
    [card] = sent[3]["attachments"]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    [end] = card["content"]["actions"]
    assert (end["type"], end["title"], end["data"]["handoff"]) == ("Action.Submit", "End chat", "end")
    if handoff_id is not None:
        assert end["data"] == {"handoff": "end", "handoffId": handoff_id}
    return sent


def assert_cannot_continue(botframework: BotFramework) -> None:
    assert texts(botframework) == [CANNOT_CONTINUE]
    assert "start a new conversation" in CANNOT_CONTINUE


def everything_stored(tables) -> list[tuple[str, str, str]]:
    return sorted((row["PartitionKey"], row["RowKey"], repr(sorted(row.items()))) for row in stored_rows(tables.handoffs, tables.links, tables.due))


class TestRedemption:
    def test_happy_path_from_a_minted_token(self, hub_env, botframework: BotFramework) -> None:
        token = mint()
        handoff_id = token[:32]
        activity = invoke(token, service_url=botframework.service_url)
        response = action(activity, jwt=botframework.jwt())
        assert response.status_code == 200 and response.get_body() == b""

        requests = botframework.connector.requests_to(CONNECTOR_PATH, "POST")
        assert len(requests) == 4
        conversation_id = fixture(INVOKE)["conversation"]["id"]
        assert {r.path for r in requests} == {f"/amer/v3/conversations/{quote(conversation_id, safe='')}/activities"}
        assert all(r.header("Authorization") == f"Bearer {botframework.issued_tokens[-1]}" for r in requests)

        first, typing, context, status = assert_continued(botframework, handoff_id)
        for sent in (first, typing, context, status):
            assert sent["from"]["id"] == activity["recipient"]["id"]
            assert sent["recipient"]["id"] == activity["from"]["id"]
            assert sent["conversation"]["id"] == conversation_id
            assert sent["replyToId"] == activity["id"]
        assert "continuing your earlier conversation with Test501" in first["text"]
        for expected in ("Lesson 1 - A simple topic", "store hours", "Transferred", "Test501"):
            assert expected in context["text"]
        assert status["text"] == WAITING

        # the hub learns that the user arrived: handoff.connected, seq 2, verified as a hub verifies it
        events = verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)
        assert [(webhook_id, e["type"], e["seq"]) for webhook_id, e in events] == [
            (handoff_id, "handoff.requested", 1), (f"{handoff_id}:2", "handoff.connected", 2)
        ]
        connected = events[1][1]
        assert connected["handoffId"] == handoff_id and connected["occurredAt"].endswith("Z")
        assert connected["user"] == {k: activity["from"][k] for k in ("id", "aadObjectId", "name") if k in activity["from"]}
        assert (connected["tenantId"], connected["locale"]) == (TENANT, activity["locale"])

        # the handoff is now connected to this Teams chat, and the chat belongs to it
        record = services.handoff_store(current_settings()).find(handoff_id)
        assert record.connected and record.teams.conversation_id == conversation_id
        assert (record.settled_seq, record.next_seq) == (2, 3)
        assert services.link_store(current_settings()).find(conversation_id).handoff_id == handoff_id

    def test_replay_elsewhere_is_told_to_start_a_new_conversation(self, env, botframework) -> None:
        token = mint()
        assert redeem(botframework, token).status_code == 200
        botframework.connector.clear()
        again = redeem(botframework, token, **as_user(2))  # a forwarded link, opened by someone else
        assert again.status_code == 200 and again.get_body() == b""
        assert_cannot_continue(botframework)
        botframework.connector.clear()
        redeem(botframework, token, **in_chat("a:another-chat-of-the-same-user"))
        assert_cannot_continue(botframework)

    def test_every_link_of_a_handoff_is_spent_once_one_is_redeemed(self, env, botframework) -> None:
        first, second = mint(), mint()
        assert first != second and first[:32] == second[:32]
        assert redeem(botframework, second).status_code == 200
        assert_continued(botframework)
        botframework.connector.clear()
        redeem(botframework, first, **as_user(2))
        assert_cannot_continue(botframework)

    def test_the_same_user_in_the_same_chat_is_already_connected_even_with_an_expired_link(self, hub_env, botframework, monkeypatch) -> None:
        # changed by contract (2026-11-24): a replay by the owner of the chat is told to carry on, not refused
        monkeypatch.setenv("HANDOFF_TOKEN_TTL_SECONDS", "2")
        token = mint()
        assert redeem(botframework, token).status_code == 200
        assert_continued(botframework)
        botframework.connector.clear()
        assert redeem(botframework, token).status_code == 200
        assert texts(botframework) == [ALREADY_CONNECTED]
        time.sleep(2.1)  # the link has expired now
        botframework.connector.clear()
        assert redeem(botframework, token).status_code == 200
        assert texts(botframework) == [ALREADY_CONNECTED]
        botframework.connector.clear()
        redeem(botframework, token, **as_user(2))  # anyone else: the expired, spent link can't continue
        assert_cannot_continue(botframework)
        assert [e["type"] for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)] == ["handoff.requested", "handoff.connected"]

    def test_a_token_of_an_ended_handoff_cannot_continue_and_nothing_is_written(self, hub_env, botframework, tables) -> None:
        token = mint()
        answer = hub_call(token[:32], {"type": "failed"}, secret=HUB_SECRET)
        assert answer.status_code == 202 and body_json(answer)["state"] == "ended"
        before = everything_stored(tables)
        assert redeem(botframework, token).status_code == 200
        assert_cannot_continue(botframework)
        assert everything_stored(tables) == before
        assert [e["type"] for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET)] == ["handoff.requested"]

    @pytest.mark.parametrize("conversation_type", ["groupChat", "channel"])
    def test_a_group_chat_is_answered_like_an_unknown_token_and_consumes_nothing(self, env, botframework, tables, conversation_type) -> None:
        token = mint()
        before = everything_stored(tables)
        group = in_chat("19:meeting_group@thread.v2", conversationType=conversation_type)
        assert redeem(botframework, token, **group).status_code == 200
        assert_cannot_continue(botframework)
        assert everything_stored(tables) == before  # no claim, no link, nothing
        botframework.connector.clear()
        assert redeem(botframework, token).status_code == 200  # still redeemable in the user's 1:1 chat
        assert_continued(botframework, token[:32])

    def test_earlier_link_still_works_after_a_repeat(self, env, botframework) -> None:
        first = mint()
        mint()
        redeem(botframework, first)
        assert_continued(botframework)

    def test_expired_token(self, env, botframework, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_TOKEN_TTL_SECONDS", "1")
        token = mint()
        time.sleep(2.1)
        assert redeem(botframework, token).status_code == 200
        assert_cannot_continue(botframework)

    @pytest.mark.parametrize(
        "forge",
        [
            lambda real: "A" * 43,
            lambda real: "garbled token!",
            lambda real: "",
            lambda real: "x" * 5000,
            lambda real: "a" * 32 + "B" * 43,  # well-formed, no such handoff
            lambda real: real[:32] + "B" * 43,  # a real handoff, a forged secret
            lambda real: real[:-1],
            lambda real: real + "=",
        ],
        ids=["43-chars", "garbled", "empty", "5000-chars", "unknown-handoff", "forged-secret", "truncated", "padded"],
    )
    def test_unknown_or_garbled_token(self, env, botframework, tables, forge) -> None:
        real = mint()
        before = everything_stored(tables)
        assert redeem(botframework, forge(real)).status_code == 200
        assert_cannot_continue(botframework)
        assert everything_stored(tables) == before  # no storage write
        botframework.connector.clear()
        assert redeem(botframework, real).status_code == 200
        assert_continued(botframework)

    def test_bound_to_another_user_is_refused_and_not_consumed(self, env, botframework) -> None:
        token = mint(params={"userId": "11111111-2222-3333-4444-555555555555"})
        redeem(botframework, token)
        assert_cannot_continue(botframework)
        botframework.connector.clear()
        redeem(botframework, token, **{"from": {"id": "29:x", "aadObjectId": "11111111-2222-3333-4444-555555555555"}})
        assert_continued(botframework)

    def test_user_binding_with_no_aad_object_id_is_refused(self, env, botframework) -> None:
        token = mint(params={"userId": USER})
        redeem(botframework, token, **{"from": {"id": "29:no-aad"}})
        assert_cannot_continue(botframework)

    def test_tenant_binding(self, env, botframework) -> None:
        token = mint(params={"userId": USER, "tenantId": "other-tenant"})
        redeem(botframework, token)
        assert_cannot_continue(botframework)

        fresh = mint(params={"userId": USER, "tenantId": TENANT}, event=handoff_event(id="another"))
        botframework.connector.clear()
        invoke_without_conversation_tenant = invoke(fresh, service_url=botframework.service_url)
        del invoke_without_conversation_tenant["conversation"]["tenantId"]  # falls back to channelData.tenant.id
        assert action(invoke_without_conversation_tenant, jwt=botframework.jwt()).status_code == 200
        assert_continued(botframework)

    def test_thirty_users_at_once_one_continuation(self, hub_env, botframework) -> None:
        token = mint()
        barrier = threading.Barrier(30)
        statuses: list[int] = []

        def attempt(number: int) -> None:
            activity = invoke(token, service_url=botframework.service_url, **as_user(number))
            jwt = botframework.jwt()
            barrier.wait()
            statuses.append(action(activity, jwt=jwt).status_code)

        threads = [threading.Thread(target=attempt, args=(n,)) for n in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [200] * 30
        sent = botframework.sent_activities()
        assert sum(1 for a in sent if a["type"] == "typing") == 1
        assert sum(1 for a in sent if a.get("text") == CANNOT_CONTINUE) == 29
        connected = [e for _, e in verified_hub_events(hub_env, HUB_PATH, HUB_SECRET) if e["type"] == "handoff.connected"]
        [winner] = [a for a in sent if a["type"] == "typing"]
        assert [e["user"]["id"] for e in connected] == [winner["recipient"]["id"]]

    def test_thirty_taps_of_one_user_in_one_chat_one_continuation(self, env, botframework) -> None:
        token = mint()
        barrier = threading.Barrier(30)
        answers: list[object] = []

        def attempt() -> None:
            activity = invoke(token, service_url=botframework.service_url)
            jwt = botframework.jwt()
            barrier.wait()
            answers.append(action(activity, jwt=jwt))

        threads = [threading.Thread(target=attempt) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # the others either see the link being opened right now (503, retry) or, once it is, "already connected"
        assert {a.status_code for a in answers} <= {200, 503}
        assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 503)
        sent = botframework.sent_activities()
        assert sum(1 for a in sent if a["type"] == "typing") == 1
        assert CANNOT_CONTINUE not in texts(botframework)
        assert texts(botframework).count(ALREADY_CONNECTED) == sum(a.status_code == 200 for a in answers) - 1
        botframework.connector.clear()
        redeem(botframework, token)
        assert texts(botframework) == [ALREADY_CONNECTED]

    def test_outbound_bot_token_is_cached(self, env, botframework) -> None:
        mint()
        redeem(botframework, mint())
        requested = len(botframework.login.requests_to("/botframework.com/oauth2"))
        redeem(botframework, mint(event=handoff_event(id="second")))
        assert len(botframework.login.requests_to("/botframework.com/oauth2")) == requested


class TestManagedIdentity:
    """MicrosoftAppType=UserAssignedMSI: outbound tokens from azure-identity, here from a loopback stand-in for
    App Service's identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER)."""

    @pytest.fixture
    def identity(self, env, monkeypatch):
        server = LoopbackServer("identity-endpoint")
        server.route("/msi/token", lambda r: Answer(200, {"access_token": "msi-bot-token", "expires_on": str(int(time.time()) + 3600),
                                                          "resource": "https://api.botframework.com", "token_type": "Bearer"}))
        monkeypatch.setenv("IDENTITY_ENDPOINT", server.url + "/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", "identity-header-value")
        monkeypatch.setenv("MicrosoftAppType", "UserAssignedMSI")
        monkeypatch.setenv("MicrosoftAppPassword", "")
        from shared import connector

        monkeypatch.setattr(connector, "_credentials", {})  # each test starts with no cached bot token
        yield server
        server.stop()

    def test_connector_calls_carry_the_managed_identity_token(self, identity, botframework) -> None:
        token = mint()
        assert redeem(botframework, token).status_code == 200
        assert_continued(botframework)
        requests = botframework.connector.requests_to(CONNECTOR_PATH, "POST")
        assert {r.header("Authorization") for r in requests} == {"Bearer msi-bot-token"}
        [asked] = identity.requests
        assert f"client_id={APP_ID}" in asked.path and "resource=https://api.botframework.com" in asked.path
        assert asked.header("X-IDENTITY-HEADER") == "identity-header-value"

    def test_identity_endpoint_failing_is_503_and_the_token_survives(self, identity, botframework) -> None:
        token = mint()
        identity.script("/msi/token", *[Answer(500, {"error": "down"})] * 20)
        response = redeem(botframework, token)
        assert response.status_code == 503 and error_of(response)["code"] == "identity_unavailable"
        assert response.headers["Retry-After"]
        assert botframework.sent_activities() == []
        identity.clear()
        assert redeem(botframework, token).status_code == 200
        assert_continued(botframework)


class TestConnectorFaults:
    def test_fails_twice_then_succeeds(self, env, botframework) -> None:
        token = mint()
        botframework.connector.script(CONNECTOR_PATH, Answer(503), Answer(429, headers={"Retry-After": "1"}))
        assert redeem(botframework, token).status_code == 200
        assert_continued(botframework)
        assert len(botframework.connector.requests_to(CONNECTOR_PATH)) == 6  # 2 refused, then the 4 messages

    def test_always_failing_is_503_and_the_token_stays_redeemable(self, env, botframework) -> None:
        token = mint()
        botframework.connector.script(CONNECTOR_PATH, *[Answer(503)] * 50)
        started = time.monotonic()
        response = redeem(botframework, token)
        assert time.monotonic() - started < 10
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
        assert error_of(response)["code"] == "connector_unavailable"

        botframework.connector.clear()
        assert redeem(botframework, token).status_code == 200
        assert_continued(botframework)

    def test_refused_for_good_is_502_and_the_token_stays_redeemable(self, env, botframework, caplog) -> None:
        token = mint()
        botframework.connector.script(
            CONNECTOR_PATH, Answer(403, {"error": {"code": "BotNotInConversationRoster"}}, {"X-Correlating-OperationId": "op-1234"})
        )
        response = redeem(botframework, token)
        assert response.status_code == 502 and error_of(response)["code"] == "connector_refused"
        assert any("op-1234" in r.getMessage() for r in caplog.records)
        botframework.connector.clear()
        redeem(botframework, token)
        assert_continued(botframework)

    def test_an_unexpected_failure_while_sending_releases_the_claim(self, env, botframework, monkeypatch) -> None:
        from shared.connector import BotConnector

        token = mint()
        original = BotConnector.send_activities

        def broken(self, *args, **kwargs):
            raise RuntimeError("a bug in the sending code")

        monkeypatch.setattr(BotConnector, "send_activities", broken)
        response = redeem(botframework, token)
        assert response.status_code == 500 and error_of(response)["code"] == "internal_error"
        assert "bug" not in error_of(response)["message"]  # no internals echoed
        monkeypatch.setattr(BotConnector, "send_activities", original)
        assert redeem(botframework, token).status_code == 200
        assert_continued(botframework)

    def test_token_endpoint_refusing_credentials_is_502(self, env, botframework, monkeypatch) -> None:
        token = mint()
        monkeypatch.setenv("MicrosoftAppPassword", "another-password")
        monkeypatch.setenv("BOT_TOKEN_URL", botframework.login.url + "/botframework.com/oauth2/v2.0/token?wrong=1")
        monkeypatch.setenv("MicrosoftAppId", APP_ID)
        botframework.login.script("/botframework.com/oauth2", Answer(401, {"error": "invalid_client"}))
        response = redeem(botframework, token)
        assert response.status_code == 502 and error_of(response)["code"] == "credentials_refused"
        assert botframework.sent_activities() == []


class TestAuthentication:
    @pytest.mark.parametrize("case", sorted(FORGED))
    def test_forged_jwt_is_401_with_no_outbound_call_and_the_token_intact(self, env, botframework, case: str) -> None:
        token = mint()
        activity = invoke(token, service_url=botframework.service_url)
        response = action(activity, jwt=FORGED[case](botframework))
        assert response.status_code == 401
        assert error_of(response) == {"code": "unauthorized", "message": "The request is not authenticated as coming from the Bot Framework."}
        assert botframework.sent_activities() == []
        assert action(activity, jwt=botframework.jwt()).status_code == 200
        assert_continued(botframework)

    @pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Bearer garbage"])
    def test_missing_or_garbage_authorization_is_401(self, env, botframework, header: str | None) -> None:
        token = mint()
        headers = {} if header is None else {"Authorization": header}
        response = action(invoke(token, service_url=botframework.service_url), headers=headers)
        assert response.status_code == 401
        assert botframework.sent_activities() == []

    def test_disallowed_service_url_host_never_gets_a_token(self, env, botframework) -> None:
        evil = LoopbackServer("evil")
        try:
            evil_url = evil.url.replace("127.0.0.1", "localhost") + "/amer/"
            token = mint()
            activity = invoke(token, service_url=evil_url)
            response = action(activity, jwt=botframework.jwt(service_url=evil_url))
            assert response.status_code == 401
            assert evil.requests == []
        finally:
            evil.stop()

    def test_plain_http_service_url_off_loopback_is_401(self, env, botframework, monkeypatch) -> None:
        monkeypatch.setenv("HANDOFF_ALLOWED_SERVICE_URL_HOSTS", "trafficmanager.net")
        url = "http://smba.trafficmanager.net/amer/"
        response = action(invoke(mint(), service_url=url), jwt=botframework.jwt(service_url=url))
        assert response.status_code == 401

    def test_within_leeway_is_accepted(self, env, botframework) -> None:
        jwt = botframework.jwt(issued_offset=-3600 - 200, lifetime=3600)  # expired 200 s ago, leeway is 300 s
        assert action(invoke(mint(), service_url=botframework.service_url), jwt=jwt).status_code == 200
        assert_continued(botframework)

    def test_key_without_endorsements_is_accepted(self, env, botframework) -> None:
        assert action(invoke(mint(), service_url=botframework.service_url), jwt=botframework.jwt(key="plain")).status_code == 200
        assert_continued(botframework)

    def test_service_url_trailing_slash_is_ignored(self, env, botframework) -> None:
        jwt = botframework.jwt(service_url=botframework.service_url.rstrip("/"))
        assert action(invoke(mint(), service_url=botframework.service_url), jwt=jwt).status_code == 200

    def test_empty_app_id_matches_no_audience(self, env, botframework, monkeypatch) -> None:
        token = mint()
        monkeypatch.setenv("MicrosoftAppId", "")
        monkeypatch.setenv("HANDOFF_BOT_ID", APP_ID)
        response = action(invoke(token, service_url=botframework.service_url), jwt=botframework.jwt(claims={"aud": ""}))
        assert response.status_code == 401

    def test_auth_disabled_only_by_the_flag_and_warns_every_request(self, env, botframework, monkeypatch, caplog) -> None:
        token = mint()
        monkeypatch.setenv("HANDOFF_AUTH_DISABLED", "true")
        caplog.set_level("WARNING")
        assert action(invoke(token, service_url=botframework.service_url)).status_code == 200
        assert action(user_message("hi", service_url=botframework.service_url)).status_code == 200
        warnings = [r for r in caplog.records if "HANDOFF_AUTH_DISABLED" in r.getMessage() and r.levelname == "WARNING"]
        assert len(warnings) == 2

    def test_order_413_then_401_then_400(self, env, botframework, monkeypatch) -> None:
        assert action(b"not json").status_code == 401
        assert action(b"not json", jwt=botframework.jwt()).status_code == 400
        monkeypatch.setenv("HANDOFF_MAX_BODY_BYTES", "100")
        assert action(b"x" * 101).status_code == 413


class TestOtherActivities:
    def test_other_invoke_is_501(self, env, botframework) -> None:
        activity = invoke("x", service_url=botframework.service_url, name="adaptiveCard/action")
        response = action(activity, jwt=botframework.jwt())
        assert response.status_code == 501 and error_of(response)["code"] == "not_implemented"

    @pytest.mark.parametrize("kind", ["conversationUpdate", "typing", "event", "messageReaction"])
    def test_other_activities_are_acknowledged(self, env, botframework, kind: str) -> None:
        activity = invoke("x", service_url=botframework.service_url, type=kind, name=None)
        response = action(activity, jwt=botframework.jwt())
        assert response.status_code == 200 and response.get_body() == b""
        assert botframework.sent_activities() == []

    def test_a_message_with_no_open_handoff_gets_the_polite_reply(self, env, botframework, tables) -> None:
        # changed by contract (2026-11-24): the user is told there is no open conversation, instead of silence
        response = action(user_message("hello?", service_url=botframework.service_url), jwt=botframework.jwt())
        assert response.status_code == 200 and response.get_body() == b""
        assert texts(botframework) == [NO_OPEN_CONVERSATION]
        assert stored_rows(tables.handoffs, tables.links) == []

    @pytest.mark.parametrize("value", [None, {}, {"continuation": 42}])
    def test_invoke_without_continuation_string_is_400(self, env, botframework, value) -> None:
        activity = invoke("x", service_url=botframework.service_url)
        activity["value"] = value
        response = action(activity, jwt=botframework.jwt())
        assert response.status_code == 400 and "value.continuation" in error_of(response)["message"]


class TestKeyCache:
    @pytest.fixture
    def openid(self, botframework: BotFramework):
        server = LoopbackServer("openid")
        server.route("/meta", lambda r: Answer(200, {"jwks_uri": f"{server.url}/keys"}))
        server.route("/keys", lambda r: Answer(200, {"keys": [k.jwk() for k in botframework.keys.values()]}))
        yield server
        server.stop()

    def make(self, openid: LoopbackServer, clock: list[float]) -> OpenIdKeys:
        import httpx

        return OpenIdKeys(f"{openid.url}/meta", client=httpx.Client(), clock=lambda: clock[0])

    def test_unknown_kid_refreshes_at_most_once_a_minute(self, openid) -> None:
        clock = [1000.0]
        keys = self.make(openid, clock)
        assert keys.find("key-main") is not None
        assert len(openid.requests_to("/keys")) == 1
        for _ in range(5):
            assert keys.find("nope") is None
        assert len(openid.requests_to("/keys")) == 1
        clock[0] += 61
        assert keys.find("nope") is None
        assert keys.find("nope") is None
        assert len(openid.requests_to("/keys")) == 2

    def test_refreshed_at_least_daily(self, openid) -> None:
        clock = [1000.0]
        keys = self.make(openid, clock)
        keys.find("key-main")
        clock[0] += 23 * 3600
        keys.find("key-main")
        assert len(openid.requests_to("/keys")) == 1
        clock[0] += 2 * 3600
        assert keys.find("key-main") is not None  # the cached key serves while the refresh runs in the background
        waited = time.monotonic() + 5
        while len(openid.requests_to("/keys")) < 2 and time.monotonic() < waited:
            time.sleep(0.01)
        assert len(openid.requests_to("/keys")) == 2

    def test_concurrent_requests_share_one_refresh(self, openid) -> None:
        keys = self.make(openid, [1000.0])
        barrier = threading.Barrier(20)
        found = []

        def find() -> None:
            barrier.wait()
            found.append(keys.find("key-main"))

        threads = [threading.Thread(target=find) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(found) and len(found) == 20
        assert len(openid.requests_to("/meta")) == 1

    def test_keys_unreachable_is_503_not_401(self, env, botframework, monkeypatch) -> None:
        from devtools.loopback import free_port

        monkeypatch.setenv("BOT_OPENID_METADATA_URL", f"http://127.0.0.1:{free_port()}/meta")
        response = action(invoke(mint(), service_url=botframework.service_url), jwt=botframework.jwt())
        assert response.status_code == 503 and response.headers["Retry-After"]
